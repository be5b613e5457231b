"""MFU: dense bf16 peaks by device name (vendors' published figures), per-device token rates, and
no guessed peak for an unknown device."""

from __future__ import annotations

import json

import pytest
import torch

from herd.train import throughput
from herd.train.trainer import Trainer
from tests.unit.test_trainer import _config, data  # noqa: F401 - the shared prepared shards


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989),  # SXM
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA H200 NVL", 835),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA B200", 2250),
        ("NVIDIA L40S", 362),
        ("AMD Instinct MI300X", 1307),
        ("NVIDIA GeForce RTX 4090", None),
        ("Tesla T4", None),
    ],
)
def test_bf16_dense_peaks_by_device_name(name, tflops):
    peak = throughput.peak_flops_for(name)
    assert peak == (None if tflops is None else tflops * 1e12)


def test_peak_override_and_cpu():
    assert throughput.resolve_peak(torch.device("cpu"), 0.0) is None
    assert throughput.resolve_peak(torch.device("cpu"), 2e12) == 2e12
    assert throughput.mfu(1000.0, 6e6, None) is None
    assert throughput.mfu(1000.0, 6e6, 1e12) == pytest.approx(6e-3)


def test_logged_mfu_uses_the_peak_given(tmp_path, data):  # noqa: F811
    run = tmp_path / "run"
    over = {"train.steps": "2", "train.log_every": "1", "train.peak_flops": "1e9"}
    trainer = Trainer(_config(data, run, **over), run)
    trainer.fit(show_progress=False)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:  # one process: its rate is the device's
            assert r["mfu"] == pytest.approx(r["tokens_per_s"] * trainer.flops_per_token / 1e9)
