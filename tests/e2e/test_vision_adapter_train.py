"""`herd train` of a vision adapter (herd/train/adapters.py): `[model] vision = {...}` over a
tiny text checkpoint, trained on captions of generated pictures (coloured shapes drawn with
Pillow) mixed with text-only rows and a conversation with image parts. The loss falls, the text
model's weights stay bit for bit, the gates move off zero, the checkpoint loads with herd.load
and `herd generate --image` runs on it; bad input is one line and exit code 2."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import herd
from herd.checkpoint.io import save_herd_folder
from herd.vocab.bpe import train_bpe
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from vision_adapter import draw_shape  # the study's shapes (experiments/vision_adapter.py)

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
SHAPES = ("square", "circle", "triangle")
TEXT = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64)
VISION = (
    "{ dim = 16, n_layers = 2, n_global_layers = 1, n_heads = 2, ffn_dim = 32, image_size = 28, "
    "patch_size = 14, max_tiles = 2, aspect_ratios = [[1, 1], [1, 2], [2, 1]], "
    "feature_layers = [0, 1] }"
)


def _draw(path, colour: str, shape: str, wide: bool) -> None:
    image = Image.new("RGB", (56 if wide else 28, 28), (255, 255, 255))
    draw_shape(ImageDraw.Draw(image), shape, (4, 4, 23, 23), COLOURS[colour])
    image.save(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, text checkpoint, image-text rows, one picture)."""
    root = tmp_path_factory.mktemp("vision_adapter")
    captions = [f"a {c} {s}." for c in COLOURS for s in SHAPES]
    (root / "corpus.txt").write_text("\n".join(captions * 20 + ["What is it? Describe it."] * 20))
    tok = herd.load_tokenizer(train_bpe([root / "corpus.txt"], 300, root / "tok", False, True))
    config = herd.ModelConfig(vocab_size=tok.vocab_size, **TEXT)
    text = save_herd_folder(
        config, herd.build_model(config, seed=0).state_dict(), root / "text", tok.files()
    )
    (root / "img").mkdir()
    rng, rows = random.Random(0), []
    for i in range(36):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        _draw(root / "img" / f"{i}.png", colour, shape, wide=i % 4 == 0)
        rows.append({"image": f"img/{i}.png", "text": f"a {colour} {shape}."})
    rows.append({"text": "What is it? Describe it."})  # text alone
    rows.append(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "path": "img/0.png"},
                        {"type": "image", "path": "img/1.png"},
                        {"type": "text", "text": "Describe it."},
                    ],
                },
                {"role": "assistant", "content": rows[0]["text"]},
            ]
        }
    )
    data = root / "captions.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, text, data, root / "img" / "0.png"


def _config(root, text, data, out, steps=30) -> str:
    path = root / f"{out.name}.toml"
    path.write_text(
        f'[model]\ncheckpoint = "{text}"\nvision = {VISION}\n\n'
        f'[data]\npath = "{data}"\nseq_len = 48\nbatch_size = 4\nval_fraction = 0.2\n\n'
        "[optim]\nlr = 1e-2\nwarmup_steps = 2\nweight_decay = 0.0\n\n"
        f"[train]\nsteps = {steps}\nlog_every = 5\neval_every = 15\ncheckpoint_every = 15\n"
        f'device = "cpu"\nout = "{out}"\n\n[stability]\nenabled = false\n'
    )
    return str(path)


def test_adapter_trains_on_a_frozen_text_model(setup, tmp_path):
    root, text, data, picture = setup
    out = tmp_path / "run"
    proc = herd_cli_inprocess("train", _config(root, text, data, out))
    assert proc.returncode == 0, proc.stderr
    assert "38 of 38 rows kept" in proc.stderr and "held out" in proc.stderr, proc.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert losses[-1] < losses[0] - 0.2, losses  # the adapter alone learns (the LM is frozen)
    assert len(val) == 2 and val[-1] < val[0]

    step = out / "checkpoints" / "step-00000030"
    trained, base = herd.load(step), herd.load(text)
    assert trained.config.vision is not None and trained.config.vision.cross_attention_layers == (
        1,
    )  # one cross-attention layer before the last block of a 2-block model
    weights = dict(trained.named_parameters())
    for name, p in base.named_parameters():  # the text model, frozen: bit for bit
        assert torch.equal(weights[name], p), name
    gates = [p for n, p in weights.items() if n.startswith("cross_layers") and n.endswith("gate")]
    assert gates and all(float(g.detach().abs().min()) > 0 for g in gates)
    # text alone: still exactly the text model (its rows see no image)
    tokens = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        assert torch.equal(trained(tokens), base(tokens))

    # herd generate --image on the trained checkpoint, in a real process
    run = herd_cli(
        "generate", step, "--image", picture, "--prompt", "a", "--max-new-tokens", "4",
        "--temperature", "0", "--device", "cpu", "--no-compile",
    )  # fmt: skip
    assert run.stdout.strip()
    # bad input: a missing picture, named with its row, before any training
    bad = root / "bad.jsonl"
    bad.write_text(json.dumps({"image": "img/missing.png", "text": "a red square."}) + "\n")
    proc = herd_cli(
        "train", _config(root, text, bad, tmp_path / "bad"), "--data.strict", "true", check=False
    )
    one_line_error(proc, f"{bad}:1: image 1", "missing.png", "no such image file")


def test_full_unfreezing_and_option_errors(setup, tmp_path):
    root, text, data, _ = setup
    out = tmp_path / "full"
    config = _config(root, text, data, out, steps=2)
    proc = herd_cli_inprocess("train", config, "--train.vision_train", "full")
    assert proc.returncode == 0, proc.stderr
    trained = dict(herd.load(out / "checkpoints" / "step-00000002").named_parameters())
    base = herd.load(text)
    assert not torch.equal(trained["layers.0.attn.wq.weight"], base.layers[0].attn.wq.weight)

    def error(*flags, config=None):
        config = config or _config(root, text, data, tmp_path / "error")
        return herd_cli_inprocess("train", config, *flags, check=False)

    one_line_error(error("--train.vision_train", "lora"), "train.vision_train 'lora'")
    one_line_error(
        error("--lora.r", "4", "--train.vision_train", "full"),
        "[lora] with train.vision_train full",
    )
    one_line_error(error("--model.checkpoint", ""), "[model] vision needs [model] checkpoint")
    one_line_error(
        error(config=_config(root, text, root / "nothing.jsonl", tmp_path / "x")), "nothing.jsonl"
    )
    rows = root / "no_text.jsonl"
    rows.write_text(json.dumps({"image": "img/0.png"}) + "\n")
    one_line_error(
        error("--data.strict", "true", config=_config(root, text, rows, tmp_path / "y")),
        f"{rows}:1: neither 'text' nor 'messages'",
    )


def test_lora_on_the_text_model_beside_the_adapter(setup, tmp_path):
    """[lora] on an adapter run: the text blocks' projections get adapters, the encoder and
    cross-attention layers train whole; the checkpoint holds both (no full weights) and loads
    as the model that was trained."""
    from safetensors.torch import load_file

    from herd.model.image_processing import ImageProcessor
    from herd.train.config import load_run_config
    from herd.train.trainer import Trainer

    root, text, data, picture = setup
    out = tmp_path / "lora"
    flags = {"lora.r": "4", "lora.target_modules": "all-linear"}
    trainer = Trainer(load_run_config(_config(root, text, data, out), flags), out)
    trainer.fit(show_progress=False)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 0.1, losses

    step = out / "checkpoints" / "step-00000030"
    assert not (step / "model.safetensors").exists()
    adapter = json.loads((step / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["vision", "cross_layers", "extra_embed"]
    keys = set(load_file(step / "adapter_model.safetensors"))
    lora = {k for k in keys if ".lora_" in k}
    assert len(lora) == 2 * 7 * 2  # A and B of all seven projections of both text blocks
    assert all(k.startswith("base_model.model.model.layers.") for k in lora)
    whole = {k.removeprefix("base_model.model.") for k in keys - lora}
    trained = dict(trainer.model.named_parameters())
    assert whole == {n for n in trained if n.startswith(("vision.", "cross_layers.", "extra_"))}

    loaded, base = herd.load(step).eval(), herd.load(text)
    assert loaded.config.vision is not None
    wq = loaded.layers[0].attn.wq.weight
    assert not torch.equal(wq, base.layers[0].attn.wq.weight)  # the adapter, merged
    images = ImageProcessor(loaded.config.vision)([[picture]])
    tokens = torch.tensor([[loaded.config.image_token_id, 1, 5, 9, 14]])
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(tokens, images=images)
        got = loaded(tokens, images=images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lora", [[], ["--lora.r", "4"]], ids=["adapter", "lora"])
def test_a_stopped_run_resumes_exactly(setup, tmp_path, lora):
    """Stopped after its step-4 checkpoint and resumed with `herd train --resume`: the
    uninterrupted run's losses (the data cursor, the adapter's weights and moments restored)."""
    from herd.train.config import load_run_config
    from herd.train.trainer import Trainer

    root, text, data, _ = setup
    flags = ["--train.checkpoint_every", "4", "--train.eval_every", "4", "--train.log_every", "1"]
    flags += lora
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert herd_cli_inprocess("train", _config(root, text, data, whole, 8), *flags).returncode == 0
    config = _config(root, text, data, part, 8)
    overrides = dict(zip([f[2:] for f in flags[::2]], flags[1::2], strict=True))
    Trainer(load_run_config(config, overrides), part).fit(show_progress=False, stop_at=4)
    assert herd_cli_inprocess("train", "--resume", part).returncode == 0

    def losses(out):
        lines = (out / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines]
        return [(r["step"], r.get("loss", r.get("val_loss"))) for r in rows]

    assert [s for s, _ in losses(part)] == [s for s, _ in losses(whole)]
    assert [x for _, x in losses(part)] == pytest.approx([x for _, x in losses(whole)], rel=1e-5)
