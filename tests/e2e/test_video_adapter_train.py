"""`herd train` of a video adapter (herd/train/adapters.py, herd/data/video_text.py):
`[model] video = {...}` over a tiny vision checkpoint, trained on mp4 clips of a square moving
left or right (written with PyAV), a frame folder, a text row and a conversation with a video
part. The loss falls; only the video parts train (the text model and the image encoder and
cross-attention layers stay bit for bit, Llama 3 section 7.4); the checkpoint loads with herd.load
and `herd generate --video` prints what `herd.generate` gives; bad input is one line and exit
code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.data.video import write_video
from herd.model.families import build_model
from herd.vocab.bpe import train_bpe
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error

TEXT = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64)
VISION = dict(
    dim=16, n_layers=2, n_global_layers=1, n_heads=2, ffn_dim=32, image_size=28, patch_size=14,
    max_tiles=1, aspect_ratios=((1, 1),), feature_layers=(0, 1), cross_attention_layers=(1,),
)  # fmt: skip
VIDEO = "{ max_frames = 4, merge = 2, latents = 2, layers = 1, n_heads = 2 }"


def _frames(direction: str, start: int) -> list[np.ndarray]:
    """Four 28x28 frames of a black square moving 4 pixels a frame."""
    out = []
    for t in range(4):
        x = start + (4 * t if direction == "right" else -4 * t)
        frame = np.full((28, 28, 3), 255, np.uint8)
        frame[10:18, x : x + 8] = 0
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, vision checkpoint, text checkpoint, rows, a clip)."""
    root = tmp_path_factory.mktemp("video_adapter")
    captions = ["moving left.", "moving right.", "What is it doing?"]
    (root / "corpus.txt").write_text("\n".join(captions * 30))
    tok = herd.load_tokenizer(train_bpe([root / "corpus.txt"], 300, root / "tok", False, True))
    text_config = herd.ModelConfig(vocab_size=tok.vocab_size, **TEXT)
    text_model = herd.build_model(text_config, seed=0)
    text = save_herd_folder(text_config, text_model.state_dict(), root / "text", tok.files())
    vision_config = text_config.replace(vision=herd.ModelConfig.from_dict(
        {**text_config.to_dict(), "vision": VISION}).vision)  # fmt: skip
    vision_model = build_model(vision_config, seed=1)
    vision_model.load_state_dict(text_model.state_dict(), strict=False)
    vision = save_herd_folder(
        vision_config, vision_model.state_dict(), root / "vision", tok.files()
    )
    (root / "clips").mkdir()
    rows = []
    for i in range(24):
        direction = "left" if i % 2 else "right"
        start = 14 + i % 4 if direction == "left" else 2 + i % 4
        write_video(_frames(direction, start), root / "clips" / f"{i}.mp4")
        rows.append({"video": f"clips/{i}.mp4", "text": f"moving {direction}."})
    folder = root / "clips" / "frames"
    folder.mkdir()
    for t, frame in enumerate(_frames("right", 3)):
        from PIL import Image

        Image.fromarray(frame).save(folder / f"frame{t + 1}.png")
    rows.append({"video": "clips/frames", "text": "moving right."})  # a frame folder
    rows.append({"text": "What is it doing?"})  # text alone
    rows.append(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "video", "path": "clips/0.mp4"},
                        {"type": "text", "text": "What is it doing?"},
                    ],
                },
                {"role": "assistant", "content": "moving right."},
            ]
        }
    )
    data = root / "clips.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, vision, text, data, root / "clips" / "0.mp4"


def _config(root, start, data, out, steps=30, vision: str = "") -> str:
    path = root / f"{out.name}.toml"
    vision = f"vision = {vision}\n" if vision else ""
    path.write_text(
        f'[model]\ncheckpoint = "{start}"\n{vision}video = {VIDEO}\n\n'
        f'[data]\npath = "{data}"\nseq_len = 48\nbatch_size = 4\nval_fraction = 0.2\n\n'
        "[optim]\nlr = 1e-2\nwarmup_steps = 2\nweight_decay = 0.0\n\n"
        f"[train]\nsteps = {steps}\nlog_every = 5\neval_every = 15\ncheckpoint_every = 15\n"
        f'device = "cpu"\nout = "{out}"\n\n[stability]\nenabled = false\n'
    )
    return str(path)


def test_only_the_video_parts_train_on_a_vision_checkpoint(setup, tmp_path):
    root, vision, _, data, clip = setup
    out = tmp_path / "run"
    proc = herd_cli_inprocess("train", _config(root, vision, data, out))
    assert proc.returncode == 0, proc.stderr
    assert "27 of 27 rows kept" in proc.stderr and "videos to train on" in proc.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 0.2, losses

    step = out / "checkpoints" / "step-00000030"
    trained, base = herd.load(step), herd.load(vision)
    assert trained.config.video is not None and trained.config.video.max_frames == 4
    weights = dict(trained.named_parameters())
    for name, p in base.named_parameters():  # text model, image encoder, image layers
        assert torch.equal(weights[name], p), name
    video = {n: p for n, p in weights.items() if n.startswith("video_")}
    assert video and all(n.startswith(("video_aggregator", "video_cross", "video_embed"))
                         for n in video)  # fmt: skip
    gates = [p for n, p in video.items() if n.endswith("gate")]
    assert gates and all(float(g.detach().abs().min()) > 0 for g in gates)

    # herd generate --video: what herd.generate gives for the clip's frames, in a real process
    from herd.prompt_media import read_video_input

    tok = herd.load_tokenizer(step)
    prompt = [trained.config.video_token_id, *tok.encode("moving", bos=True)]
    new = herd.generate(trained.eval(), prompt, max_new_tokens=3,
                        videos=read_video_input(clip, trained.config))  # fmt: skip
    run = herd_cli(
        "generate", step, "--video", clip, "--prompt", "moving", "--max-new-tokens", "3",
        "--temperature", "0", "--device", "cpu", "--no-compile",
    )  # fmt: skip
    assert run.stdout.strip() == tok.decode(new, skip_special=True).strip()


def test_a_text_checkpoint_trains_the_vision_and_video_parts(setup, tmp_path):
    root, _, text, data, _ = setup
    out = tmp_path / "from_text"
    config = _config(root, text, data, out, steps=2, vision=_vision_toml())
    proc = herd_cli_inprocess("train", config)
    assert proc.returncode == 0, proc.stderr
    trained = dict(herd.load(out / "checkpoints" / "step-00000002").named_parameters())
    base = dict(herd.load(text).named_parameters())
    assert all(torch.equal(trained[n], p) for n, p in base.items())  # the text model, frozen
    fresh = build_model(herd.load(out / "checkpoints" / "step-00000002").config, seed=0)
    moved = {n for n, p in fresh.named_parameters() if not torch.equal(trained[n], p)}
    assert any(n.startswith("vision.") for n in moved)  # the encoder learns through the clips


def _vision_toml() -> str:
    def value(v):
        if isinstance(v, tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in VISION.items()) + " }"


def test_bad_clips_and_options_are_one_line(setup, tmp_path):
    root, vision, text, data, clip = setup
    bad = root / "bad.jsonl"
    bad.write_text(json.dumps({"video": "clips/missing.mp4", "text": "moving left."}) + "\n")
    proc = herd_cli_inprocess(
        "train", _config(root, vision, bad, tmp_path / "bad"), "--data.strict", "true", check=False
    )
    one_line_error(proc, f"{bad}:1: video", "missing.mp4", "does not exist")

    (root / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    broken = root / "broken.jsonl"
    rows = [{"video": "clips/broken.mp4", "text": "moving left."}] * 4
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = herd_cli_inprocess(
        "train", _config(root, vision, broken, tmp_path / "broken", steps=1), check=False
    )
    # found when its batch is built: after the data summary, one error line naming the row
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"herd train: error: {broken}:") and "broken.mp4" in error, error
    assert "Traceback" not in proc.stderr

    two = root / "two.jsonl"
    two.write_text(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "video", "path": "clips/0.mp4"},
                                     {"type": "video", "path": "clips/1.mp4"}]},
        {"role": "assistant", "content": "moving left."}]}) + "\n")  # fmt: skip
    proc = herd_cli_inprocess(
        "train", _config(root, vision, two, tmp_path / "two"), "--data.strict", "true", check=False
    )
    one_line_error(proc, f"{two}:1:", "one clip at most")

    one_line_error(
        herd_cli_inprocess("train", _config(root, vision, data, tmp_path / "l"), "--lora.r", "4",
                           check=False),
        "[lora] with a video model",
    )  # fmt: skip
    sampling = ["--prompt", "x", "--max-new-tokens", "2", "--device", "cpu", "--no-compile"]
    one_line_error(
        herd_cli("generate", vision, "--video", clip, *sampling, check=False),
        "a model without a video adapter; --video needs a video model",
    )
    one_line_error(
        herd_cli("generate", text, "--video", clip, "--image", clip, *sampling, check=False),
        "--image and --video cannot be combined",
    )
    stray = root / "stray.mp4"
    stray.write_bytes(b"\x00" * 64)
    run = tmp_path / "run-for-errors"
    herd_cli_inprocess("train", _config(root, vision, data, run, steps=1))
    step = run / "checkpoints" / "step-00000001"
    one_line_error(
        herd_cli("generate", step, "--video", stray, *sampling, check=False), "stray.mp4"
    )
    one_line_error(
        herd_cli("convert", step, str(tmp_path / "hf"), "--to", "hf", check=False),
        "a video model has no Hugging Face form",
    )


def test_frame_folders_read_as_clips(setup):
    from herd.prompt_media import read_video_input

    root, vision, *_ = setup
    config = herd.load(vision).config.replace(video=herd.ModelConfig.from_dict(
        {**herd.load(vision).config.to_dict(), "video": {"max_frames": 4}}).video)  # fmt: skip
    videos = read_video_input(Path(root / "clips" / "frames"), config)
    assert tuple(videos.frames.shape) == (1, 4, 3, 28, 28) and videos.counts.tolist() == [4]
