"""Exact accumulation under FSDP2: in two gloo processes, grad_accum = 4 at batch 2 gives the
gradients and loss of one process at batch 8 (float64, within 1e-6), for every objective."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.dist.launch import ROOT, torchrun
from tests.unit.test_train_step import OBJECTIVES, _gradients, _trainer
from tests.unit.test_trainer import data  # noqa: F401 - the shared prepared shards


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data):  # noqa: F811
    out = tmp_path_factory.mktemp("two")
    worker = ROOT / "tests" / "dist" / "accumulation_worker.py"
    torchrun(29523, str(worker), str(data), str(out), timeout=600)
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
