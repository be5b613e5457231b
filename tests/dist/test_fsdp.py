"""FSDP2 on CPU with gloo: two processes give the losses of one process at the same global batch,
and a checkpoint written by the sharded run resumes in a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from herd.data.shards import prepare
from herd.tokenizer.train import train_bpe
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


def _args(data: Path, out: Path, steps: int) -> list[str]:
    values = {"model.preset": "demo", "model.n_layers": 2, "model.dim": 64, "model.n_heads": 4,
              "model.n_kv_heads": 2, "model.ffn_dim": 128, "model.max_seq_len": 64,
              "data.path": data, "data.seq_len": 32, "data.batch_size": 4,
              "train.steps": steps, "train.log_every": 1, "train.eval_every": 3,
              "train.eval_batches": 2, "train.checkpoint_every": 3, "optim.lr": "3e-3",
              "optim.warmup_steps": 2, "train.out": out}
    return [token for k, v in values.items() for token in (f"--{k}", str(v))]


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss")) for r in rows]


def test_two_gloo_processes_match_one(tmp_path, data):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "herd", "train", *_args(data, tmp_path / "one", 6)],
                   check=True, capture_output=True, env=env, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", "29517", "-m", "herd", "train"]
    proc = subprocess.run([*torchrun, *_args(data, tmp_path / "two", 6)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) > 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-5

    # the sharded run's checkpoint (full state, single-process format) resumes in one process
    subprocess.run([sys.executable, "-m", "herd", "train", "--resume", str(tmp_path / "two"),
                    "--train.steps", "9"], check=True, capture_output=True, env=env, timeout=300)
    assert (tmp_path / "two" / "checkpoints" / "step-00000009").is_dir()
