"""herd/fourd/clip_eval.py: R-precision is top-1 retrieval of each render's prompt by cosine
similarity (checked on embeddings made by hand), and `herd 4d-eval` computes it with a tiny random
transformers CLIP saved in a temporary folder, equal to what CLIP's own forward pass
(logits_per_image) ranks; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from herd.fourd.clip_eval import clip_r_precision, load_clip, r_precision_from
from tests.e2e.cli_runner import herd_cli_inprocess, one_line_error
from tests.fourd_pipelines import tiny_clip_tokenizer


def test_r_precision_on_hand_made_embeddings():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    images = torch.tensor([[2.0, 0.1], [0.1, 3.0], [-1.0, 0.9], [0.5, -0.4]])
    # nearest prompts by cosine: 0, 1, 2 (cos 0.74 against 0.67 for prompt 1), 0
    assert r_precision_from(images, text, [0, 1, 2, 0]) == pytest.approx(1.0)
    assert r_precision_from(images, text, [0, 1, 1, 0]) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
    )

    root = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_clip_tokenizer(root / "tokenizer")
    vocab = tokenizer.get_vocab()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=16,
    )  # fmt: skip
    folder = root / "clip"
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clip_r_precision_matches_clip_forward(tiny_clip):
    model, processor = load_clip(tiny_clip)
    rng = torch.Generator().manual_seed(1)
    pictures = [Image.fromarray((torch.rand(40, 40, 3, generator=rng) * 255).byte().numpy())
                for _ in range(6)]  # fmt: skip
    prompts = ["a red ball", "a blue cube", "a green tree"]
    labels = [0, 0, 1, 1, 2, 2]
    score = clip_r_precision(model, processor, pictures, labels, prompts)
    with torch.no_grad():
        out = model(**processor(text=prompts, images=pictures, return_tensors="pt", padding=True))
    expected = float((out.logits_per_image.argmax(-1) == torch.tensor(labels)).float().mean())
    assert score == pytest.approx(expected)


def test_herd_4d_eval_on_runs(tiny_clip, tmp_path):
    flags = ["--steps", "1,1,1", "--resolution", "8", "--sr-resolution", "8", "--frames", "2",
             "--samples", "4", "--render-size", "8", "--no-progress"]  # fmt: skip
    runs = []
    for prompt in ("a red ball", "a bouncing ball"):
        out = tmp_path / prompt.replace(" ", "-")
        assert (
            herd_cli_inprocess("4d", prompt, "--oracle", "--out", str(out), *flags).returncode == 0
        )
        runs.append(str(out))
    distractors = tmp_path / "prompts.txt"
    distractors.write_text("a tree\na car\n")
    proc = herd_cli_inprocess("4d-eval", *runs, "--clip", str(tiny_clip), "--prompts",
                              str(distractors), "--views", "2", "--size", "32", "--json",
                              "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["renders"] == 4 and result["prompts"] == 4 and 0 <= result["r_precision"] <= 1
    one_line_error(herd_cli_inprocess("4d-eval", runs[0], "--clip", str(tiny_clip), check=False),
                   "at least two prompts")  # fmt: skip
    one_line_error(herd_cli_inprocess("4d-eval", *runs, "--clip", str(tmp_path), check=False),
                   "not a CLIP model folder")  # fmt: skip
    one_line_error(herd_cli_inprocess("4d-eval", str(tmp_path), "--clip", str(tiny_clip),
                                      check=False), "not a finished herd 4d run")  # fmt: skip
