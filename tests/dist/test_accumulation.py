"""Exact accumulation under FSDP2: in two gloo processes, grad_accum = 4 at batch 2 gives the
gradients and loss of one process at batch 8 (float64, within 1e-6), for every objective."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.test_train_step import OBJECTIVES, _gradients, _trainer
from tests.unit.test_trainer import data  # noqa: F401 - the shared prepared shards

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data):  # noqa: F811
    out = tmp_path_factory.mktemp("two")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29523",
        str(ROOT / "tests" / "dist" / "accumulation_worker.py"),
        str(data),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out / "grads.safetensors")


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_processes_accumulate_exactly(tmp_path, data, two_processes, objective):  # noqa: F811
    reference = _trainer(data, tmp_path / "one", objective, batch=8, accum=1)
    loss, grads, _ = _gradients(reference)
    for accum in (4, 1):
        key = f"{objective}/{accum}"
        assert float(two_processes[f"{key}/loss"]) == pytest.approx(loss, rel=0, abs=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(two_processes[f"{key}/{name}"], g, rtol=0, atol=1e-6)
