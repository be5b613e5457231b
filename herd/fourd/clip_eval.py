"""CLIP R-precision of 4D runs (`herd 4d-eval`), the text-to-3D/4D papers' measure (MAV3D reports
83.7 on Make-A-Video's 300 prompts): render each run's scene from fixed cameras and times, and
count how often CLIP ranks the run's own prompt first among all the prompts compared (every run's
and any distractors given).

    R-precision = mean over renders of [argmax_j cos(image, text_j) == the render's prompt]

CLIP is transformers' `CLIPModel` read from a local folder (OpenAI's checkpoints, e.g.
openai/clip-vit-base-patch32, or any saved with `save_pretrained`); herd never downloads it.
(open_clip would serve as well, but it needs torchvision, whose PyPI builds do not load beside
the CPU build of torch that herd pins.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from herd.errors import HerdError


def r_precision_from(image_emb: torch.Tensor, text_emb: torch.Tensor, labels) -> float:
    """Top-1 retrieval accuracy of `labels` (prompt index per image) given image embeddings
    [N, D] and prompt embeddings [P, D] (cosine similarity)."""
    image = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    text = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    best = (image @ text.T).argmax(dim=-1)
    return float((best == torch.as_tensor(labels)).float().mean())


def load_clip(folder: str | Path):
    """(model, processor) of a local transformers CLIP folder; one line when it is not one."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line of output per command, not a loading bar
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise HerdError(f"{path}: not a CLIP model folder (no config.json; herd never downloads)")
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise HerdError(f"{path}: cannot load CLIP from it ({str(e).splitlines()[0]})") from None
    return model, processor


@torch.no_grad()
def clip_r_precision(model, processor, images: list, labels: list[int], prompts: list[str]):
    """R-precision of PIL `images` whose prompts are `labels` (indices into `prompts`)."""
    text = processor(text=prompts, return_tensors="pt", padding=True)
    pixels = processor(images=images, return_tensors="pt")
    text_emb = _features(model.get_text_features(**text))
    image_emb = _features(model.get_image_features(**pixels))
    return r_precision_from(image_emb, text_emb, labels)


def _features(out) -> torch.Tensor:
    """The projected embeddings (transformers 5 may return a model output holding them)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def finished_run(run: Path) -> tuple[str, Path]:
    """(the prompt, the last checkpoint) of a finished herd 4d run; one line when it is not one."""
    config = run / "config.json"
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    if not config.is_file() or not checkpoints:
        raise HerdError(f"{run}: not a finished herd 4d run (config.json and checkpoints/)")
    return json.loads(config.read_text())["prompt"], checkpoints[-1]


@torch.no_grad()
def render_views(checkpoint: Path, views: int = 8, size: int = 224) -> list:
    """`views` PIL renders of a 4d checkpoint: cameras around the scene at 15 degrees of
    elevation, times spread over [-1, 1]."""
    from PIL import Image

    from herd.fourd.optimise import load_field
    from herd.fourd.rendering import Camera, render_image

    field = load_field(checkpoint)
    images = []
    for k in range(views):
        t = -1.0 + 2.0 * k / max(1, views - 1)
        image = render_image(field, Camera(360.0 * k / views, 15.0), t, size)
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        images.append(Image.fromarray(pixels))
    return images


def run(args) -> None:
    """`herd 4d-eval`: every input is checked (runs, prompts, CLIP folder) before any render."""
    from tqdm import tqdm

    if args.views < 1 or args.size < 8:
        raise HerdError(f"--views {args.views}, --size {args.size}: expected >= 1 and >= 8")
    finished = [finished_run(folder) for folder in args.runs]
    prompts = list(dict.fromkeys(prompt for prompt, _ in finished))
    if args.prompts:
        if not args.prompts.is_file():
            raise HerdError(f"{args.prompts}: no such prompts file")
        prompts += [x.strip() for x in args.prompts.read_text().splitlines()
                    if x.strip() and x.strip() not in prompts]  # fmt: skip
    if len(prompts) < 2:
        raise HerdError("R-precision needs at least two prompts (more runs, or --prompts)")
    model, processor = load_clip(args.clip)
    images, labels = [], []
    for prompt, checkpoint in tqdm(finished, desc="herd 4d-eval", unit="run",
                                   disable=args.no_progress):  # fmt: skip
        renders = render_views(checkpoint, args.views, args.size)
        images += renders
        labels += [prompts.index(prompt)] * len(renders)
    score = clip_r_precision(model, processor, images, labels, prompts)
    result = {"r_precision": score, "renders": len(images), "prompts": len(prompts)}
    print(json.dumps(result) if args.json else f"CLIP R-precision {100 * score:.1f} "
          f"({len(images)} renders, {len(prompts)} prompts)")  # fmt: skip
