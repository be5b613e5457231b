"""The pretraining loop: loss goes down, the run folder is complete, resume is bit-exact (also
after SIGKILL), damaged checkpoints are skipped, and bad configs fail with one clear message."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import herd
from herd import HerdError
from herd.data.shards import prepare
from herd.model import loss as loss_module
from herd.train.config import load_run_config
from herd.train.trainer import Trainer
from herd.vocab.bpe import train_bpe
from tests.tokenizer_corpus import CORPUS

MODEL = {
    "preset": "demo",
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "ffn_dim": 128,
    "max_seq_len": 64,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    texts = [t for t in CORPUS if t.strip() and "\ud800" not in t]
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"d{i:02d}.txt").write_text(texts[i % len(texts)] * (1 + i % 3), "utf-8")
    tok = train_bpe([corpus], 300, root / "tok", show_progress=False)
    prepare([str(corpus)], tok, root / "shards", val_fraction=0.2, show_progress=False)
    return root / "shards"


def _config(data: Path, out: Path, **over):
    overrides = {
        "data.path": str(data),
        "data.seq_len": "32",
        "data.batch_size": "4",
        "train.steps": "24",
        "train.log_every": "2",
        "train.eval_every": "8",
        "train.checkpoint_every": "4",
        "train.keep_checkpoints": "10",
        "train.out": str(out),
        "optim.lr": "3e-3",
        "optim.warmup_steps": "4",
        **{f"model.{k}": str(v) for k, v in MODEL.items()},
        **over,
    }
    return load_run_config(None, overrides)


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"loss"' in x]


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _steps(path: Path) -> list[int]:
    return [r["step"] for r in _records(path)]


def test_loss_decreases_and_run_folder(tmp_path, data):
    run = _config(data, tmp_path / "run", **{"optim.lr": "1e-2"})
    last = Trainer(run, tmp_path / "run").fit(show_progress=False)
    assert loss_module._workspace.buffer is None  # the kept logits buffer is given back
    losses = _losses(tmp_path / "run")
    assert losses[-1] < losses[0] - 0.5
    assert last["val_bpb"] > 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_gib"}
    assert keys <= set(rows[0])
    assert (tmp_path / "run" / "config.toml").is_file()
    assert (tmp_path / "run" / "plots" / "loss.png").is_file()
    assert (tmp_path / "run" / "plots" / "bpb.png").is_file()
    events = [json.loads(x)["event"] for x in (tmp_path / "run" / "events.jsonl").open()]
    assert events.count("checkpoint") == 6


# What differs between an interrupted run and an uninterrupted one: clocks, and where it is.
_UNREPRODUCIBLE = ("time", "tokens_per_s", "mfu", "memory_gib", "path", "checkpoint")


def _lines(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _UNREPRODUCIBLE} for r in _records(path)]


def test_resume_is_bitwise_exact(tmp_path, data):
    # Monitored every 5 steps: the snapshot of step 4's gradients is in the step-4 checkpoint,
    # so the record of step 5 after the resume has its gradient correlation too.
    over = {"stability.every": "5"}
    full = _config(data, tmp_path / "full", **over)
    Trainer(full, tmp_path / "full").fit(show_progress=False)
    part = _config(data, tmp_path / "part", **over)
    Trainer(part, tmp_path / "part").fit(show_progress=False, stop_at=10)  # newest ckpt: 8
    # Damage the newest checkpoint: the resume falls back to step 4, behind logged lines
    # (metrics up to 10, the checkpoint event of 8) that the resumed run logs again.
    newest = tmp_path / "part/checkpoints/step-00000008/model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10] + b"0123456789")
    resumed = _config(data, tmp_path / "part", **over)
    assert Trainer(resumed, tmp_path / "part", resume=True).fit(show_progress=False)["step"] == 24
    a = load_file(tmp_path / "full/checkpoints/step-00000024/model.safetensors")
    b = load_file(tmp_path / "part/checkpoints/step-00000024/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    # The run folder reads as if uninterrupted, line for line, plus the resume history.
    for name in ("metrics.jsonl", "stability.jsonl"):
        assert _lines(tmp_path / "full" / name) == _lines(tmp_path / "part" / name), name
    records = _records(tmp_path / "part/stability.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert records[0]["groups"]["layers.0"]["grad_time_corr"] is not None
    events = _lines(tmp_path / "part/events.jsonl")
    history = [e for e in events if e["event"] in ("resume", "checkpoint_skipped")]
    assert [(e["step"], e["event"]) for e in history] == [(0, "checkpoint_skipped"), (4, "resume")]
    replayed = [e for e in events if e not in history]
    assert replayed == _lines(tmp_path / "full/events.jsonl")
    # Resuming a finished run trains nothing and reports what the run logged last.
    again = Trainer(_config(data, tmp_path / "part"), tmp_path / "part", resume=True)
    last = again.fit(show_progress=False)
    assert last["step"] == 24 and last["val_bpb"] > 0 and "loss" in last
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")


def test_resume_after_sigkill(tmp_path, data):
    reference = _config(data, tmp_path / "ref")
    Trainer(reference, tmp_path / "ref").fit(show_progress=False)
    run_dir = tmp_path / "killed"
    base = [sys.executable, "-m", "herd", "train", "--train.out", str(run_dir)]
    for k, v in {
        **{f"model.{k}": v for k, v in MODEL.items()},
        "data.path": data,
        "data.seq_len": 32,
        "data.batch_size": 4,
        "train.steps": 24,
        "train.log_every": 2,
        "train.eval_every": 8,
        "train.checkpoint_every": 4,
        "train.keep_checkpoints": 10,
        "optim.lr": "3e-3",
        "optim.warmup_steps": 4,
    }.items():
        base += [f"--{k}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for kill_after in (1, 3):  # checkpoints on disk before the kill
        args = base if kill_after == 1 else [*base, "--resume", str(run_dir)]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            done = list((run_dir / "checkpoints").glob("step-*")) if run_dir.exists() else []
            if len(done) >= kill_after or proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(
        [*base, "--resume", str(run_dir)], env=env, check=True, capture_output=True, timeout=300
    )
    a = load_file(tmp_path / "ref/checkpoints/step-00000024/model.safetensors")
    b = load_file(run_dir / "checkpoints/step-00000024/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "ref") == _losses(run_dir)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path, data):
    over = {"train.steps": "8", "train.log_every": "1"}
    Trainer(_config(data, tmp_path / "ref", **over), tmp_path / "ref").fit(show_progress=False)
    run = tmp_path / "run"
    Trainer(_config(data, run, **over), run).fit(show_progress=False, stop_at=3)  # no checkpoint
    # A write killed half-way left its temporary folder behind; the next start removes it.
    stale = run / "checkpoints" / ".step-00000004.tmp-x1y2"
    (stale / "train_state").mkdir(parents=True)
    trainer = Trainer(_config(data, run, **over), run, resume=True)
    assert trainer.step == 0 and not stale.exists()
    trainer.fit(show_progress=False)
    assert _lines(run / "metrics.jsonl") == _lines(tmp_path / "ref" / "metrics.jsonl")
    events = [(e["step"], e["event"]) for e in _records(run / "events.jsonl")]
    assert events[:2] == [(0, "stale_checkpoint_removed"), (0, "resume")]


def test_a_replace_killed_half_way_puts_the_old_checkpoint_back(tmp_path, data):
    run = tmp_path / "run"
    Trainer(_config(data, run, **{"train.steps": "4"}), run).fit(show_progress=False)
    # publish_folder renames step-N aside before renaming the new one in; killed in between:
    aside = run / "checkpoints" / ".step-00000004.old-a1b2"
    aside.mkdir()
    (run / "checkpoints" / "step-00000004").rename(aside / "step-00000004")
    trainer = Trainer(_config(data, run, **{"train.steps": "8"}), run, resume=True)
    assert trainer.step == 4 and not aside.exists()


def test_resume_with_a_changed_model_says_which_fields(tmp_path, data):
    run = tmp_path / "run"
    Trainer(_config(data, run, **{"train.steps": "4"}), run).fit(show_progress=False)
    written = (run / "config.toml").read_text()
    changed = _config(data, run, **{"model.dim": "96", "model.n_heads": "6", "train.steps": "8"})
    with pytest.raises(HerdError) as e:
        Trainer(changed, run, resume=True)
    message = str(e.value)
    assert "step-00000004: the checkpoint's model differs" in message and "\n" not in message
    assert "dim: 64 -> 96" in message and "n_heads: 4 -> 6" in message
    assert (run / "config.toml").read_text() == written  # nothing already written is lost
    # On the command line: one line on stderr, exit code 2.
    proc = subprocess.run(
        [sys.executable, "-m", "herd", "train", "--resume", str(run), "--model.dim", "96"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "dim: 64 -> 96" in proc.stderr


def test_damaged_checkpoint_is_skipped(tmp_path, data):
    run = _config(data, tmp_path / "run", **{"train.steps": "8"})
    Trainer(run, tmp_path / "run").fit(show_progress=False)
    newest = tmp_path / "run/checkpoints/step-00000008/model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10] + b"0123456789")
    trainer = Trainer(_config(data, tmp_path / "run"), tmp_path / "run", resume=True)
    assert trainer.step == 4
    events = [json.loads(x) for x in (tmp_path / "run/events.jsonl").open()]
    skipped = [e for e in events if e["event"] == "checkpoint_skipped"]
    assert skipped and "model.safetensors does not match" in skipped[0]["reason"]


def test_bad_configs(tmp_path, data):
    with pytest.raises(HerdError, match="did you mean 'seq_len'"):
        load_run_config(None, {"data.seq_lne": "8"})
    with pytest.raises(HerdError, match=r"^--optimizer.lr: unknown section 'optimizer'.*'optim'"):
        load_run_config(None, {"optimizer.lr": "1"})
    # A mistyped key is reported where it was written: the override, or the file.
    config = tmp_path / "run.toml"
    config.write_text('[model]\npreset = "demo"\n[optim]\nwarmup_step = 3\n')
    with pytest.raises(
        HerdError, match=rf"^{re.escape(str(config))}: unknown key 'optim.warmup_step'"
    ):
        load_run_config(str(config))
    config.write_text('[model]\npreset = "demo"\n')
    with pytest.raises(HerdError, match=r"^--optim.warmup_step: .*did you mean 'warmup_steps'"):
        load_run_config(str(config), {"optim.warmup_step": "3"})
    # Values are checked against each field's type, in the file as on the command line.
    config.write_text("[model]\ndim = 64.0\n[train]\nsteps = 1e3\ncompile = true\n")
    run = load_run_config(str(config), {"optim.lr": "1", "model.n_layers": "2"})
    assert (run.model["dim"], run.model["n_layers"], run.train.steps) == (64, 2, 1000)
    assert run.train.compile is True and run.optim.lr == 1.0
    for text, error in [
        ("[train]\nsteps = 2.5\n", "train.steps = 2.5, expected an integer"),
        ("[train]\nsteps = true\n", "train.steps = true, expected an integer"),
        ('[train]\ncompile = "yes"\n', 'train.compile = "yes", expected true or false'),
        ("[data]\npath = 3\n", "data.path = 3, expected a string"),
        ("[model]\ndim = 6.5\n", "model.dim = 6.5, expected an integer"),
    ]:
        config.write_text(text)
        with pytest.raises(HerdError, match=rf"^{re.escape(f'{config}: {error}')}$"):
            load_run_config(str(config))
    with pytest.raises(HerdError, match=r"^--model.dim 6.5: expected an integer$"):
        load_run_config(None, {"model.dim": "6.5"})
    # A section written as a value is an error naming it, not a crash.
    config.write_text("train = 1\n")
    with pytest.raises(
        HerdError, match=rf"^{re.escape(str(config))}: 'train' is a value, expected a \[train\]"
    ):
        load_run_config(str(config), {"train.steps": "3"})
    with pytest.raises(HerdError, match="does not fit the model's context 64"):
        Trainer(_config(data, tmp_path / "r", **{"data.seq_len": "128"}), tmp_path / "r")
    with pytest.raises(HerdError, match="fewer than one batch"):
        Trainer(_config(data, tmp_path / "r", **{"data.batch_size": "100000"}), tmp_path / "r")


def test_a_validation_split_too_small_is_reported_not_silent(tmp_path, data, capsys):
    from herd.data.batches import PackedBatches
    from herd.data.shards import TokenShards

    val = PackedBatches(TokenShards(data), "val", 1, 32).n_windows
    assert PackedBatches(TokenShards(data), "train", val + 1, 32).n_windows > val
    run = _config(data, tmp_path / "r", **{"data.batch_size": str(val + 1), "train.steps": "2"})
    Trainer(run, tmp_path / "r").fit(show_progress=False)
    assert (
        f"warning: no validation: {data}: split 'val' has {val} windows" in capsys.readouterr().err
    )
    lines = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").open()]
    assert lines and not any("val_loss" in x for x in lines)


def test_activation_checkpointing_and_accumulation(tmp_path, data):
    """Recomputing blocks changes memory, not numbers; accumulation runs micro-batches."""
    plain = _config(data, tmp_path / "a", **{"train.steps": "4"})
    Trainer(plain, tmp_path / "a").fit(show_progress=False)
    ac = _config(
        data, tmp_path / "b", **{"train.steps": "4", "train.activation_checkpointing": "true"}
    )
    Trainer(ac, tmp_path / "b").fit(show_progress=False)
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), abs=1e-6)
    accum = _config(data, tmp_path / "c", **{"train.steps": "2", "train.grad_accum": "2"})
    trainer = Trainer(accum, tmp_path / "c")
    trainer.fit(show_progress=False)
    assert trainer.tokens == 2 * 2 * 4 * 32


def test_training_starts_from_a_checkpoint(data, tmp_path):
    """[model] checkpoint = FOLDER: the architecture and the initial weights are the checkpoint's
    (what fine-tuning starts from); preset and checkpoint together, or an override that changes a
    shape, is a one-line error."""
    base = Trainer(_config(data, tmp_path / "base", **{"train.steps": "4"}), tmp_path / "base")
    base.fit(show_progress=False)
    start = sorted((tmp_path / "base" / "checkpoints").glob("step-*"))[-1]
    expected = herd.load(start).state_dict()

    run = load_run_config(
        None,
        {
            "model.checkpoint": str(start),
            "data.path": str(data),
            "data.seq_len": "32",
            "data.batch_size": "4",
            "train.steps": "4",
        },
    )
    tuned = Trainer(run, tmp_path / "ft")
    assert tuned.model_config == herd.load(start).config
    for name, tensor in tuned.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    with pytest.raises(HerdError, match="both preset and checkpoint"):
        load_run_config(None, {"model.checkpoint": str(start), "model.preset": "demo"})
    bad = load_run_config(
        None,
        {
            "model.checkpoint": str(start),
            "model.ffn_dim": "96",
            "data.path": str(data),
            "data.seq_len": "32",
        },
    )
    with pytest.raises(HerdError, match="has shape"):
        Trainer(bad, tmp_path / "bad")
