"""Validation during pretraining: next-token loss and bits per byte on the held-out split.

Next-token whatever the training objective, so runs with different objectives compare on the same
number (experiments/bidirectionality.py). Targets never cross a document boundary, and with
document masking attention does not either, as in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from herd.data.batches import PackedBatches
from herd.model.masks import PackedAttention
from herd.train import distributed


def loss_sums(nll: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor):
    """float64 [nats, targets counted, UTF-8 bytes of the targets] for bits-per-byte, on the
    device (no boolean indexing, which would wait for the device to size its result)."""
    keep = targets != -100
    nats = torch.where(keep, nll, 0).sum(dtype=torch.float64)
    nbytes = (token_bytes[targets.clamp(min=0)] * keep).sum(dtype=torch.float64)
    return torch.stack([nats, keep.sum(dtype=torch.float64), nbytes])


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    batches: PackedBatches,
    *,
    max_batches: int | None,
    rows: slice,
    device: torch.device,
    document_mask: bool,
    token_bytes: torch.Tensor,
    autocast: Callable[[], AbstractContextManager],
) -> dict | None:
    """{'val_loss', 'val_bpb'} over `max_batches` batches in order (this process's `rows` of
    each, summed over processes), or None when the split has no targets. Attention takes the
    form training takes on the device (block masks on CUDA)."""
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for window, docs in batches.sequential(max_batches, rows):
        inputs, targets = window[:, :-1], window[:, 1:].clone()
        targets[docs[:, 1:] != docs[:, :-1]] = -100  # never across a document boundary
        packed = PackedAttention.of(docs[:, :-1].to(device)) if document_mask else None
        targets = targets.to(device)
        with autocast():
            nll = model(inputs.to(device), packed=packed, targets=targets, reduction="none")
        sums += loss_sums(nll, targets, token_bytes)
    model.train(was_training)
    nats, count, nbytes = distributed.all_reduce_sum(sums.tolist(), device)  # the one read
    if count == 0:
        return None
    return {"val_loss": nats / count, "val_bpb": nats / math.log(2) / max(nbytes, 1)}
