"""`herd train` of a speech adapter (herd/train/adapters.py): `[model] speech = {...}` over a tiny
text checkpoint, trained on digit words spoken by espeak-ng (installed by `make test`). The loss
falls, the text model's weights stay bit for bit, the checkpoint loads with herd.load, and
`herd generate --audio` gives herd.generate's transcript of the clip; bad input is one line and
exit code 2."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.data.audio import log_mel, read_audio
from herd.data.audio_text import collate, load_audio_text
from herd.model.families import build_model
from herd.model.speech_model import Audio, speech_prompt
from herd.train.adapters import load_start_weights
from herd.vocab.bpe import train_bpe
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error

WORDS = ("one", "two", "three", "four")
SPEECH = (
    "{ n_mels = 80, stack = 4, dim = 16, n_layers = 1, n_heads = 2, ffn_dim = 32, "
    "conv_kernel = 7, max_frames = 200 }"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, text checkpoint, audio-text rows, one clip)."""
    root = tmp_path_factory.mktemp("speech_adapter")
    texts = [f"{a} {b}" for a in WORDS for b in WORDS]
    (root / "corpus.txt").write_text("\n".join(texts * 10))
    tok = herd.load_tokenizer(train_bpe([root / "corpus.txt"], 280, root / "tok", False, True))
    config = herd.ModelConfig(
        vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
        max_seq_len=96,
    )  # fmt: skip
    model = herd.build_model(config, seed=0)
    encoded = [tok.encode(t, bos=True, eos=True) for t in texts]
    width = max(map(len, encoded))
    seqs = torch.tensor([ids + [-100] * (width - len(ids)) for ids in encoded])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):  # the text model knows the sentences, not which one a clip says
        loss = model(seqs[:, :-1].clamp(min=0), targets=seqs[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    text = save_herd_folder(config, model.state_dict(), root / "text", tok.files())
    (root / "wav").mkdir()
    rng, rows = random.Random(0), []
    for i in range(24):
        said = rng.choice(texts)
        voice = rng.choice(["en+m1", "en-us+f2", "en-gb-scotland+m3"])
        subprocess.run(["espeak-ng", "-v", voice, "-s", "170", "-w", str(root / "wav" / f"{i}.wav"),
                        said], check=True)  # fmt: skip
        rows.append({"audio": f"wav/{i}.wav", "text": said})
    data = root / "speech.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, text, data, root / "wav" / "0.wav"


def _config(root, text, data, out, steps=30) -> str:
    path = root / f"{out.name}.toml"
    path.write_text(
        f'[model]\ncheckpoint = "{text}"\nspeech = {SPEECH}\n\n'
        f'[data]\npath = "{data}"\nseq_len = 64\nbatch_size = 4\nval_fraction = 0.3\n\n'
        "[optim]\nlr = 1e-2\nwarmup_steps = 2\nweight_decay = 0.0\n\n"
        f"[train]\nsteps = {steps}\nlog_every = 5\neval_every = 15\ncheckpoint_every = 15\n"
        f'device = "cpu"\nout = "{out}"\n\n[stability]\nenabled = false\n'
    )
    return str(path)


def test_adapter_trains_on_a_frozen_text_model(setup, tmp_path):
    root, text, data, clip = setup
    out = tmp_path / "run"
    proc = herd_cli_inprocess("train", _config(root, text, data, out))
    assert proc.returncode == 0, proc.stderr
    assert "audio-text data: 24 of 24 rows kept" in proc.stderr, proc.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "val_loss" in r]) == 2

    step = out / "checkpoints" / "step-00000030"
    trained, base = herd.load(step).eval(), herd.load(text)
    # the adapter alone learns (the LM is frozen): the loss on every row, with its clip, against
    # the same text model with an untrained adapter (a whole-data measure, not one batch's)
    tok = herd.load_tokenizer(step)
    rows = load_audio_text(tok, data, 64, lambda n: speech_prompt(trained.config, n))
    batch = collate(rows.examples)
    untrained = build_model(trained.config, seed=7).eval()
    load_start_weights(untrained, str(text))

    def loss(model) -> float:
        with torch.no_grad():
            audio = Audio(batch.features, batch.lengths)
            return (
                float(model(batch.inputs, targets=batch.targets, audio=audio)) / batch.loss_count()
            )

    assert loss(trained) < loss(untrained) - 0.2, (loss(trained), loss(untrained))
    assert trained.config.speech is not None and trained.config.speech.dim == 16
    weights = dict(trained.named_parameters())
    for name, p in base.named_parameters():  # the text model, frozen: bit for bit
        assert torch.equal(weights[name], p), name

    # herd generate --audio, in a real process: herd.generate's transcript of the clip
    wave = read_audio(clip)
    features = log_mel(wave)
    prompt = speech_prompt(trained.config, len(wave)) + tok.encode("", bos=True)
    audio = Audio(features[None, None], torch.tensor([[features.shape[0]]]))
    new = herd.generate(trained, prompt, 4, stop_ids=tok.stop_ids, audio=audio)
    run = herd_cli(
        "generate", step, "--audio", clip, "--prompt", "", "--max-new-tokens", "4",
        "--temperature", "0", "--device", "cpu", "--no-compile",
    )  # fmt: skip
    want = tok.decode([t for t in new if t not in tok.stop_ids])
    assert run.stdout.strip() == want.strip()


def test_audio_errors_are_one_line(setup, tmp_path):
    root, text, data, clip = setup
    one_line_error(
        herd_cli_inprocess("generate", text, "--audio", clip, "--prompt", "x", check=False),
        "--audio needs a speech model",
    )
    bad = root / "bad.wav"
    bad.write_text("not audio")
    step_config = _config(root, text, data, tmp_path / "tiny", steps=1)
    assert herd_cli_inprocess("train", step_config).returncode == 0
    step = tmp_path / "tiny" / "checkpoints" / "step-00000001"
    one_line_error(
        herd_cli("generate", step, "--audio", bad, "--prompt", "x", check=False), str(bad)
    )
    one_line_error(
        herd_cli_inprocess(
            "generate", step, "--audio", clip, "--image", clip, "--prompt", "x", check=False
        ),
        "--image and --audio cannot be combined",
    )
    rows = root / "missing.jsonl"
    rows.write_text(json.dumps({"audio": "wav/none.wav", "text": "one"}) + "\n")
    one_line_error(
        herd_cli_inprocess(
            "train", _config(root, text, rows, tmp_path / "m"), "--data.strict", "true", check=False
        ),
        f"{rows}:1: audio 1",
        "no such audio file",
    )
    one_line_error(
        herd_cli_inprocess(
            "train",
            _config(root, text, data, tmp_path / "n"),
            "--model.checkpoint",
            "",
            check=False,
        ),
        "[model] speech needs [model] checkpoint",
    )


def test_chat_hears_the_clip_in_the_first_user_turn(setup, tmp_path):
    """`herd chat --audio`: the clip's speech tokens before the first user turn's text; the reply
    is herd.generate's on that prompt."""
    root, text, data, clip = setup
    assert (
        herd_cli_inprocess("train", _config(root, text, data, tmp_path / "c", steps=2)).returncode
        == 0
    )
    step = tmp_path / "c" / "checkpoints" / "step-00000002"
    model, tok = herd.load(step).eval(), herd.load_tokenizer(step)
    wave = read_audio(clip)
    features = log_mel(wave)
    dialog = tok.encode_dialog([{"role": "user", "content": "X"}]).ids
    at = dialog.index(tok.encode("X")[0])
    said = "Repeat after me."
    prompt = dialog[:at] + speech_prompt(model.config, len(wave)) + tok.encode(said)
    prompt += dialog[at + 1 :]
    audio = Audio(features[None, None], torch.tensor([[features.shape[0]]]))
    new = herd.generate(model, prompt, 4, stop_ids=tok.stop_ids, audio=audio)
    want = tok.decode([t for t in new if t not in tok.stop_ids])
    proc = subprocess.run(
        [sys.executable, "-m", "herd", "chat", str(step), "--audio", str(clip),
         "--max-new-tokens", "4", "--temperature", "0", "--device", "cpu", "--no-compile"],
        input=f"{said}\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"> {want}\n> \n"


def test_a_speech_model_converts_to_herd_not_hf(setup, tmp_path):
    root, text, data, _ = setup
    assert (
        herd_cli_inprocess("train", _config(root, text, data, tmp_path / "v", steps=1)).returncode
        == 0
    )
    step = tmp_path / "v" / "checkpoints" / "step-00000001"
    assert herd_cli_inprocess("convert", step, tmp_path / "copy").returncode == 0
    copied, trained = herd.load(tmp_path / "copy"), herd.load(step)
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(),
                                                 trained.state_dict().values(), strict=True))  # fmt: skip
    one_line_error(
        herd_cli_inprocess("convert", step, tmp_path / "hf", "--to", "hf", check=False),
        "a speech model has no Hugging Face form",
    )
    assert not (tmp_path / "hf").exists()
