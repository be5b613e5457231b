"""A vision adapter on a small frozen language model (issue 26's study): does an image encoder
with gated cross-attention layers, trained through `herd train` on pictures this project draws,
learn to describe fresh pictures exactly, including colour-shape pairs it never saw together,
where the frozen text model alone can only guess from the prompt?

Llama 3 (section 7) adds vision compositionally: a language model trained first is frozen, and
an image encoder, a projector and gated cross-attention layers are trained on image-text pairs.
This script runs that recipe at toy scale on CPU:

1. Pictures drawn with Pillow: one to three shapes (circle, square, triangle) of one of six
   colours, all in one quadrant, on a square, wide or tall canvas (so the image processor tiles
   them in 2x2, 1x2 or 2x1 layouts), at random places and sizes. The caption says every
   attribute, exactly checkable: "two red squares in the top left." Four colour-shape pairs
   (HELD_OUT_PAIRS) never occur in a training picture.
2. A byte-level BPE and a 2-block text model trained on every caption (all 216, the held-out
   pairs' too: the language model knows the sentences, as a pretrained LM would; only the
   pictures of those pairs are withheld), saved as a herd checkpoint.
3. `herd train` (the CLI, in a subprocess) with `[model] vision = {...}` on that checkpoint:
   the text model frozen, a small encoder (56-pixel tiles of 14-pixel patches, up to 4 tiles),
   its projector, cross-attention layers and <|image|>'s row trained on captions of the training
   pictures (`<|image|><|begin_of_text|>caption<|end_of_text|>`).
4. Greedy captions after `<|image|><|begin_of_text|>` for freshly drawn pictures, (a) of the
   training colour-shape pairs and (b) of the held-out pairs: accuracy of each attribute (count,
   colour, shape, position) and of the whole caption, for the adapter and for the text-only
   baseline (the frozen text model after `<|begin_of_text|>` alone: without a picture, the
   trained model is exactly its text model, so it can only write its most likely caption).

    .venv/bin/python experiments/vision_adapter.py            # ~7 minutes on 2 CPU cores
    .venv/bin/python experiments/vision_adapter.py --quick    # a smoke test, seconds

Results on stdout, in OUT/summary.json, OUT/summary.md and OUT/vision_adapter.png; every
held-out caption in OUT/captions.jsonl. Measured: docs/multimodal.md ("Study").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as experiments/post_training.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # herd, when run from elsewhere

import torch
from PIL import Image, ImageDraw
from study_cli import parse_study, study_parser

import herd
from herd.checkpoint.io import save_herd_folder
from herd.errors import HerdError
from herd.model.image_processing import ImageProcessor
from herd.vocab.bpe import train_bpe

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 220),
    "yellow": (230, 200, 20), "purple": (140, 40, 170), "orange": (245, 130, 20),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
CANVASES = {"square": (112, 112), "wide": (160, 80), "tall": (80, 160)}  # width, height
# never drawn for training; each colour and shape still occurs with three or four others
HELD_OUT_PAIRS = (("red", "triangle"), ("green", "circle"), ("blue", "square"),
                  ("purple", "triangle"))  # fmt: skip
ATTRIBUTES = ("count", "colour", "shape", "position")
QUICK = dict(train_pictures=48, test_pictures=8, lm_steps=20, steps=20, log_every=10)


# --- pictures and captions -------------------------------------------------------------------------


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    """One filled shape in `box` (x0, y0, x1, y1): a circle, square or upward triangle."""
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)


@dataclass(frozen=True)
class Scene:
    count: int
    colour: str
    shape: str
    position: str

    def caption(self) -> str:
        plural = "s" if self.count > 1 else ""
        return (
            f"{COUNTS[self.count - 1]} {self.colour} {self.shape}{plural} in the {self.position}."
        )


def all_scenes() -> list[Scene]:
    return [
        Scene(n, c, s, p) for n in (1, 2, 3) for c in COLOURS for s in SHAPES for p in POSITIONS
    ]


def draw_scene(path: Path, scene: Scene, canvas: str, rng: random.Random) -> None:
    """The scene's shapes at random non-overlapping places and sizes inside its quadrant."""
    width, height = CANVASES[canvas]
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    qw, qh = width // 2, height // 2
    left = 0 if scene.position.endswith("left") else qw
    top = 0 if scene.position.startswith("top") else qh
    boxes: list[tuple[int, int, int, int]] = []
    largest = min(24, qw - 4, qh - 4)
    while len(boxes) < scene.count:
        boxes = []
        for _ in range(200):  # rejection sampling; start again with smaller shapes if stuck
            size = rng.randint(12, largest)
            x, y = (
                rng.randint(left + 2, left + qw - size - 2),
                rng.randint(top + 2, top + qh - size - 2),
            )
            box = (x, y, x + size, y + size)
            if all(
                x > b[2] + 2 or b[0] > box[2] + 2 or y > b[3] + 2 or b[1] > box[3] + 2
                for b in boxes
            ):
                boxes.append(box)
                if len(boxes) == scene.count:
                    break
        largest = max(12, largest - 2)
    for box in boxes:
        draw_shape(draw, scene.shape, box, COLOURS[scene.colour])
    image.save(path)


def draw_set(folder: Path, name: str, scenes: list[Scene], n: int, seed: int) -> list[dict]:
    """`n` pictures of scenes drawn uniformly from `scenes`, canvases in turn: rows for JSONL."""
    rng, rows = random.Random(seed), []
    (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene, canvas = rng.choice(scenes), tuple(CANVASES)[i % len(CANVASES)]
        draw_scene(folder / name / f"{i}.png", scene, canvas, rng)
        rows.append({"image": f"{name}/{i}.png", "text": scene.caption(), "canvas": canvas})
    return rows


def read_caption(text: str) -> dict[str, str | None]:
    """The attributes a caption states (None where it states none)."""
    words = (text.replace(".", " ") + " ").replace("s ", " ").split()  # plural shapes singular

    def first(options) -> str | None:
        return next((w for w in words if w in options), None)

    vertical, horizontal = first(("top", "bottom")), first(("left", "right"))
    position = f"{vertical} {horizontal}" if vertical and horizontal else None
    return dict(count=first(COUNTS), colour=first(COLOURS), shape=first(SHAPES), position=position)


# --- the two models --------------------------------------------------------------------------------


def train_text_model(args, out: Path, captions: list[str] | None = None) -> tuple[Path, float]:
    """A BPE and a small LM trained on every caption (full batches, AdamW): a herd checkpoint.
    `captions`: the sentences to learn (every scene's caption when None; the video study's own)."""
    captions = captions or [s.caption() for s in all_scenes()]
    (out / "captions.txt").write_text("\n".join(captions * 10) + "\n")
    folder = train_bpe([out / "captions.txt"], args.vocab, out / "tokenizer", 2, True, False)
    tok = herd.load_tokenizer(folder)
    config = herd.ModelConfig(
        vocab_size=tok.vocab_size, dim=args.dim, n_layers=args.n_layers, n_heads=4, n_kv_heads=2,
        ffn_dim=2 * args.dim, max_seq_len=64,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    model = herd.build_model(config, seed=args.seed)
    seqs = [tok.encode(c, bos=True, eos=True) for c in captions]
    width = max(map(len, seqs)) - 1
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    y = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s) - 1], y[i, : len(s) - 1] = torch.tensor(s[:-1]), torch.tensor(s[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(args.lm_steps):
        loss = model(x, targets=y) / (y != -100).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = save_herd_folder(config, model.state_dict(), out / "text", tok.files())
    return path, float(loss.detach())


VISION = (
    "{{ dim = {dim}, n_layers = 2, n_global_layers = 1, n_heads = 2, ffn_dim = {ffn}, "
    "image_size = 56, patch_size = 14, max_tiles = 4, "
    "aspect_ratios = [[1, 1], [1, 2], [2, 1], [2, 2]], feature_layers = [0, 1], "
    "cross_attention_layers = [{cross}] }}"
)


def train_adapter(args, out: Path, text: Path, data: Path) -> tuple[Path, dict]:
    """`herd train` with [model] vision on the frozen text checkpoint, as a user runs it."""
    run = out / "run"
    config = out / "vision_adapter.toml"
    cross = ", ".join(args.cross_attention_layers.split(","))
    config.write_text(
        f'[model]\ncheckpoint = "{text}"\n'
        f"vision = {VISION.format(dim=args.vision_dim, ffn=2 * args.vision_dim, cross=cross)}\n\n"
        f'[data]\npath = "{data}"\nseq_len = 32\nbatch_size = {args.batch_size}\n'
        f"val_fraction = 0.0\nseed = {args.seed}\n\n"
        f"[optim]\nlr = {args.lr}\nwarmup_steps = 20\nweight_decay = 0.0\n\n"
        f"[train]\nsteps = {args.steps}\nlog_every = {args.log_every}\n"
        f"eval_every = {args.steps}\ncheckpoint_every = {args.steps}\n"
        f'device = "cpu"\nseed = {args.seed}\nout = "{run}"\n\n[stability]\nenabled = false\n'
    )
    return herd_train(args, config, run)


def herd_train(args, config: Path, run: Path) -> tuple[Path, dict]:
    """`herd train CONFIG` in a subprocess, as a user runs it (experiments/speech_adapter.py's
    too): the checkpoint of its last step (args.steps) and a record of the losses."""
    env = dict(os.environ) | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads > 0 else {})
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "herd", "train", str(config)],
        capture_output=args.quiet, text=True, cwd=Path(__file__).resolve().parents[1], env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise HerdError(f"herd train failed: {(proc.stderr or '').strip().splitlines()[-1:]}")
    seconds = time.perf_counter() - began
    losses = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in losses if "loss" in r]
    checkpoint = run / "checkpoints" / f"step-{args.steps:08d}"
    return checkpoint, {"seconds": round(seconds, 1), "first_loss": losses[0][1],
                        "final_loss": losses[-1][1], "losses": losses}  # fmt: skip


# --- evaluation ------------------------------------------------------------------------------------


@torch.inference_mode()
def caption_pictures(model, tok, folder: Path, rows: list[dict], batch: int = 32) -> list[str]:
    """Greedy captions after <|image|><|begin_of_text|>, in batches of pictures."""
    processor = ImageProcessor(model.config.vision)
    texts = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        images = processor([[folder / r["image"]] for r in chunk])
        prompt = torch.tensor([[model.config.image_token_id, tok.bos_id]] * len(chunk))
        new = herd.generate(
            model, prompt, 16, temperature=0.0, stop_ids=[tok.eos_id], images=images
        )
        for ids in new.tolist():
            texts.append(tok.decode(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids))
    return texts


def score(texts: list[str], rows: list[dict]) -> dict:
    right = dict.fromkeys((*ATTRIBUTES, "exact"), 0)
    for text, row in zip(texts, rows, strict=True):
        said, truth = read_caption(text), read_caption(row["text"])
        for a in ATTRIBUTES:
            right[a] += said[a] == truth[a]
        right["exact"] += text.strip() == row["text"]
    return {k: v / len(rows) for k, v in right.items()} | {"pictures": len(rows)}


def report(s: dict) -> str:
    names = {"seen": "fresh pictures, training pairs", "held_out": "held-out colour-shape pairs"}
    lines = ["| pictures | captions by | count | colour | shape | position | exact caption | n |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for split, name in names.items():
        for arm, label in (("adapter", "adapter"), ("text_only", "text model alone")):
            r = s[split][arm]
            cells = " | ".join(f"{100 * r[k]:.1f}%" for k in (*ATTRIBUTES, "exact"))
            lines.append(f"| {name} | {label} | {cells} | {r['pictures']} |")
    t = s["adapter_training"]
    lines += ["", f"Text model alone writes: \"{s['text_only_caption']}\". Adapter: `herd train` "
              f"{s['settings']['steps']} steps of {s['settings']['batch_size']} pictures "
              f"({s['train_pictures']} training pictures) in {t['seconds'] / 60:.1f} minutes, "
              f"loss {t['first_loss']:.3f} -> {t['final_loss']:.3f}; {s['trainable_parameters']:,} "
              f"trainable of {s['parameters']:,} parameters. {s['minutes']:.1f} minutes in all."]  # fmt: skip
    return "\n".join(lines)


def plot(s: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (*ATTRIBUTES, "exact")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    titles = {"seen": "fresh pictures of training pairs", "held_out": "held-out colour-shape pairs"}
    for ax, (split, title) in zip(axes, titles.items(), strict=True):
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [s[split]["adapter"][k] for k in keys], 0.4, label="adapter")
        ax.bar([x + 0.2 for x in xs], [s[split]["text_only"][k] for k in keys], 0.4,
               label="text model alone")  # fmt: skip
        ax.set_xticks(list(xs), [*ATTRIBUTES, "exact\ncaption"])
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} (n={s[split]['adapter']['pictures']})")
    axes[0].set_ylabel("held-out accuracy (greedy captions)")
    axes[0].legend()
    fig.suptitle("A vision adapter on a frozen caption LM: attribute accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the run ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = study_parser(__doc__, "runs/vision_adapter")
    p.add_argument("--seed", type=int, default=0, help="seed of pictures, models and order")
    p.add_argument("--train-pictures", type=int, default=3000, help="training pictures")
    p.add_argument("--test-pictures", type=int, default=150, help="fresh pictures per split")
    p.add_argument("--vocab", type=int, default=320, help="BPE vocabulary size (at most)")
    p.add_argument("--dim", type=int, default=64, help="text model width")
    p.add_argument("--n-layers", type=int, default=2, help="text model blocks")
    p.add_argument("--lm-steps", type=int, default=200, help="text model steps (full batches)")
    p.add_argument("--vision-dim", type=int, default=32, help="image encoder width")
    p.add_argument("--cross-attention-layers", default="0,2",
                   help="places of the cross-attention layers in the stack of text blocks and "
                   "them (transformers' numbering; 0,2: before each of 2 blocks)")  # fmt: skip
    p.add_argument("--steps", type=int, default=7000, help="adapter steps (herd train)")
    p.add_argument("--batch-size", type=int, default=16, help="pictures per adapter step")
    p.add_argument("--lr", type=float, default=1e-2, help="adapter peak learning rate")
    p.add_argument("--log-every", type=int, default=100, help="herd train's logging interval")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no training output")
    args = parse_study(p, argv, QUICK)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    seen = [s for s in all_scenes() if (s.colour, s.shape) not in HELD_OUT_PAIRS]
    unseen = [s for s in all_scenes() if (s.colour, s.shape) in HELD_OUT_PAIRS]
    pictures = out / "pictures"
    train_rows = draw_set(pictures, "train", seen, args.train_pictures, args.seed)
    n = args.test_pictures
    tests = {"seen": draw_set(pictures, "seen", seen, n, args.seed + 1),
             "held_out": draw_set(pictures, "held_out", unseen, n, args.seed + 2)}  # fmt: skip
    data = pictures / "captions.jsonl"
    data.write_text("".join(json.dumps({"image": r["image"], "text": r["text"]}) + "\n"
                            for r in train_rows))  # fmt: skip

    text, lm_loss = train_text_model(args, out)
    checkpoint, trained = train_adapter(args, out, text, data)
    model, base, tok = herd.load(checkpoint), herd.load(text), herd.load_tokenizer(text)
    alone = herd.generate(base, [tok.bos_id], 16, temperature=0.0, stop_ids=[tok.eos_id])
    alone = tok.decode([t for t in alone if t != tok.eos_id])
    summary = {
        "question": "does a small encoder with cross-attention adapters on a frozen caption LM, "
        "trained through herd train, caption fresh pictures (and unseen colour-shape pairs) "
        "attribute by attribute, where the text model alone can only guess?",
        "settings": {k: v for k, v in vars(args).items() if k not in ("quiet", "threads", "out")},
        "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
        "train_pictures": len(train_rows),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for n, p in model.named_parameters()
                                    if n.startswith(("vision.", "cross_layers.", "extra_embed."))),
        "text_model_loss": lm_loss,
        "adapter_training": trained,
        "text_only_caption": alone,
    }  # fmt: skip
    written = []
    for split, rows in tests.items():
        texts = caption_pictures(model, tok, pictures, rows)
        summary[split] = {
            "adapter": score(texts, rows),
            "text_only": score([alone] * len(rows), rows),
        }
        written += [{"split": split, **r, "caption": t} for r, t in zip(rows, texts, strict=True)]
    summary["minutes"] = (time.perf_counter() - began) / 60
    text_report = report(summary)
    print("\n" + text_report)
    (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    (out / "summary.md").write_text(text_report + "\n", "utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    plot(summary, out / "vision_adapter.png")
    print(f"\nwrote {out / 'summary.json'}, {out / 'summary.md'} and {out / 'vision_adapter.png'}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except HerdError as e:
        sys.exit(f"error: {e}")
