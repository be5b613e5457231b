"""Model FLOPs utilisation: the peak FLOP/s of a device, and MFU from one device's token rate.

MFU = (tokens per second on one device) x (training FLOPs per token, `ModelConfig.flops_per_token`) /
(that device's peak). The peaks are the vendors' dense bf16 tensor-core figures (no 2:4 sparsity),
looked up by the name torch reports for the device. A device not in the table gets no MFU: a
guessed peak would make the number meaningless, so the metric stays empty and the run says once
how to set one (`train.peak_flops`).
"""

from __future__ import annotations

import sys

import torch

# (substrings that must all occur in the device name, lower case) -> dense bf16 FLOP/s. Order
# matters: the first match wins, so the PCIe/NVL variants come before the plain name.
BF16_DENSE_PEAKS: list[tuple[tuple[str, ...], float]] = [
    (("h100", "pcie"), 756e12),
    (("h100", "nvl"), 835e12),
    (("h100",), 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    (("h200", "nvl"), 835e12),
    (("h200",), 989e12),  # SXM
    (("gh200",), 989e12),
    (("a100",), 312e12),  # SXM and PCIe alike
    (("gb200",), 2500e12),  # GB200 NVL72: 360 PFLOP/s sparse over 72 GPUs, halved
    (("b200",), 2250e12),
    (("l40s",), 362e12),
    (("mi300x",), 1307e12),
]


def peak_flops_for(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a device by its name, or None when herd does not know it."""
    lowered = name.lower()
    for keys, peak in BF16_DENSE_PEAKS:
        if all(k in lowered for k in keys):
            return peak
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def resolve_peak(device: torch.device, override: float, announce: bool = True) -> float | None:
    """`train.peak_flops` when set, else the table's figure for the device, else None (and, for
    an accelerator, one line on stderr saying MFU is unknown and how to give the peak)."""
    if override > 0:
        return override
    if device.type == "cpu":
        return None  # CPUs have no single peak figure worth quoting
    name = device_name(device)
    peak = peak_flops_for(name)
    if peak is None and announce:
        print(
            f"note: MFU unknown: no peak FLOP/s known for '{name}'; set train.peak_flops",
            file=sys.stderr,
        )
    return peak


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float | None):
    """Model FLOPs utilisation of one device, or None when its peak is unknown."""
    if peak is None:
        return None
    return tokens_per_s_per_device * flops_per_token / peak
