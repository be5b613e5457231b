"""FSDP2 on CPU with gloo: two processes give the losses of one process at the same global batch;
sharded (DCP) checkpoints resume exactly in two processes and in one, load with `herd.load` equal
to the gathered full-format weights, and are skipped on resume when a shard is damaged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import herd
from herd import HerdError
from herd.data.shards import prepare
from herd.train.config import load_run_config
from herd.vocab.bpe import train_bpe
from tests.dist.launch import torchrun
from tests.tokenizer_corpus import CORPUS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    texts = [t for t in CORPUS if t.strip() and "\ud800" not in t]
    for i in range(40):
        (root / f"d{i:02d}.txt").write_text(texts[i % len(texts)] * 3, "utf-8")
    tok = train_bpe([root], 300, root / "tok", show_progress=False)
    prepare([str(root)], tok, root / "shards", val_fraction=0.2, show_progress=False)
    return root / "shards"


def _values(data: Path, out: Path, steps: int) -> dict[str, str]:
    values = {
        "model.preset": "demo",
        "model.n_layers": 2,
        "model.dim": 64,
        "model.n_heads": 4,
        "model.n_kv_heads": 2,
        "model.ffn_dim": 128,
        "model.max_seq_len": 64,
        "data.path": data,
        "data.seq_len": 32,
        "data.batch_size": 4,
        "train.steps": steps,
        "train.log_every": 1,
        "train.eval_every": 3,
        "train.eval_batches": 2,
        "train.checkpoint_every": 3,
        "optim.lr": "3e-3",
        "optim.warmup_steps": 2,
        "train.out": out,
    }
    return {k: str(v) for k, v in values.items()}


def _args(data: Path, out: Path, steps: int) -> list[str]:
    return [token for k, v in _values(data, out, steps).items() for token in (f"--{k}", v)]


def first_per_token(run: Path) -> float:
    """FLOPs per token implied by the single-process run's first MFU figure."""
    r = next(json.loads(x) for x in (run / "metrics.jsonl").open() if '"mfu"' in x)
    return r["mfu"] * 1e9 / r["tokens_per_s"]


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss")) for r in rows]


def test_two_gloo_processes_match_one(tmp_path, data):
    """Each process builds only its rows of a masked objective's batches (per-row seeds), with
    accumulation; MFU counts each device's own tokens."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = [
        "--data.objective",
        "mskbi",
        "--train.grad_accum",
        "2",
        "--train.peak_flops",
        "1e9",
    ]
    subprocess.run(
        [sys.executable, "-m", "herd", "train", *_args(data, tmp_path / "one", 6), *extra],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    torchrun(29517, "-m", "herd", "train", *_args(data, tmp_path / "two", 6), *extra)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) > 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-5
    for run, processes in (("one", 1), ("two", 2)):
        for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            if "mfu" in r:  # tokens/s is the run's; each device did its share
                per_token = r["mfu"] * 1e9 / (r["tokens_per_s"] / processes)
                assert per_token == pytest.approx(first_per_token(tmp_path / "one"))

    # the two-process run's checkpoint (sharded by default) resumes in one process
    subprocess.run(
        [
            sys.executable,
            "-m",
            "herd",
            "train",
            "--resume",
            str(tmp_path / "two"),
            "--train.steps",
            "9",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert (tmp_path / "two" / "checkpoints" / "step-00000009").is_dir()


def _torchrun(port: int, *args: str) -> None:
    torchrun(port, "-m", "herd", "train", *args)


def _events(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, data):
    """Six steps in two processes with the default format (sharded): checkpoints at 3 and 6."""
    run = tmp_path_factory.mktemp("sharded") / "run"
    _torchrun(29518, *_args(data, run, 6))
    return run


def _copy_without_last(run: Path, dst: Path) -> Path:
    """The run as if killed after step 3's checkpoint: step 6's folder gone."""
    shutil.copytree(run, dst)
    shutil.rmtree(dst / "checkpoints" / "step-00000006")
    return dst


def test_sharded_layout(sharded_run):
    step = sharded_run / "checkpoints" / "step-00000006"
    ts = step / "train_state"
    assert not (step / "model.safetensors").exists()
    assert (step / "config.json").is_file() and (step / "tokenizer.json").is_file()
    for part in ("model", "optimizer"):
        assert len(list((ts / part).glob("shard-*.safetensors"))) == 2
    names = {p.name for p in step.rglob("*") if p.is_file()}
    # safetensors, JSON and the per-process RNG tensors: no pickled DCP .metadata
    assert {n for n in names if not n.endswith((".safetensors", ".json"))} == {
        "rng-rank0.pt",
        "rng-rank1.pt",
    }
    sums = json.loads((step / "checksums.json").read_text())
    assert set(sums) == {
        str(p.relative_to(step))
        for p in step.rglob("*")
        if p.is_file() and p.name != "checksums.json"
    }
    keys = load_file(next((ts / "optimizer").glob("shard-*.safetensors"))).keys()
    assert "embed.weight.exp_avg" in keys
    assert [e["format"] for e in _events(sharded_run) if e["event"] == "checkpoint"] == [
        "sharded",
        "sharded",
    ]


def test_sharded_resume_in_two_processes(sharded_run, tmp_path):
    """Resumed from step 3 in two processes: the losses of the uninterrupted run; its full-format
    step 6 equals the sharded step 6 read by herd.load."""
    run = _copy_without_last(sharded_run, tmp_path / "run")
    _torchrun(29519, "--resume", str(run), "--train.checkpoint_format", "full")
    a, b = _losses(sharded_run), _losses(run)
    assert len(a) == len(b) > 6
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-6
    full = load_file(run / "checkpoints" / "step-00000006" / "model.safetensors")
    loaded = herd.load(sharded_run / "checkpoints" / "step-00000006").state_dict()
    assert set(full) == set(loaded) - {"output.weight"}  # tied: stored once
    assert all(torch.equal(full[k], loaded[k]) for k in full)


def test_sharded_resume_in_one_process(sharded_run, tmp_path):
    from herd.train.trainer import Trainer

    run = _copy_without_last(sharded_run, tmp_path / "run")
    trainer = Trainer(load_run_config(str(run / "config.toml")), run, resume=True)
    assert trainer.step == 3
    trainer.fit(show_progress=False)
    a, b = _losses(sharded_run), _losses(run)
    assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
    assert (run / "checkpoints" / "step-00000006" / "model.safetensors").is_file()  # auto: full


def test_damaged_shard_is_skipped(sharded_run, tmp_path):
    from herd.train.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(sharded_run, run)
    shard = next((run / "checkpoints/step-00000006/train_state/model").glob("shard-00002-*"))
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF  # a flipped bit in the tensor data: still a readable safetensors file
    shard.write_bytes(bytes(raw))
    trainer = Trainer(load_run_config(str(run / "config.toml")), run, resume=True)
    assert trainer.step == 3
    skipped = [e for e in _events(run) if e["event"] == "checkpoint_skipped"]
    assert len(skipped) == 1 and shard.name in skipped[0]["reason"]


def test_sharded_format_in_one_process_and_bad_value(tmp_path, data):
    """train.checkpoint_format sharded works without a process group, resuming bit for bit."""
    from herd.train.trainer import Trainer

    values = {**_values(data, tmp_path / "a", 4), "train.checkpoint_format": "sharded"}
    Trainer(load_run_config(None, values), tmp_path / "a").fit(show_progress=False)
    part = load_run_config(None, {**values, "train.out": str(tmp_path / "b")})
    Trainer(part, tmp_path / "b").fit(show_progress=False, stop_at=3)
    Trainer(part, tmp_path / "b", resume=True).fit(show_progress=False)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a = herd.load(tmp_path / "a" / "checkpoints" / "step-00000004").state_dict()
    b = herd.load(tmp_path / "b" / "checkpoints" / "step-00000004").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(HerdError, match=r"train.checkpoint_format 'zip': expected auto, full"):
        Trainer(load_run_config(None, {**values, "train.checkpoint_format": "zip"}), tmp_path / "c")


def test_blocks_compiled_before_sharding(tmp_path, data):
    """train.compile under FSDP2: each block is compiled, then sharded (torchtitan's order), and
    two processes train as one eager process does."""
    from herd.train.trainer import Trainer

    values = _values(data, tmp_path / "eager", 3)
    Trainer(load_run_config(None, values), tmp_path / "eager").fit(show_progress=False)
    _torchrun(29524, *_args(data, tmp_path / "compiled", 3), "--train.compile", "true")
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(a) == len(b) > 3
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
