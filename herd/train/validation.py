"""Validation during training: loss and bits per byte of the targets of held-out batches.

A run's `TrainingData.val` hands out the held-out batches. Pretraining's are next-token batches
of the held-out split whatever the training objective, so runs with different objectives compare
on the same number (experiments/bidirectionality.py); targets never cross a document boundary, and
with document masking attention does not either, as in training (`next_token_batches`). SFT's are
held-out conversations, packed and masked as in training (assistant tokens only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager

import torch

from herd.data.batches import PackedBatches
from herd.data.objectives import TrainBatch
from herd.model.masks import PackedAttention
from herd.train import distributed


def loss_sums(nll: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor):
    """float64 [nats, targets counted, UTF-8 bytes of the targets] for bits-per-byte, on the
    device (no boolean indexing, which would wait for the device to size its result)."""
    keep = targets != -100
    nats = torch.where(keep, nll, 0).sum(dtype=torch.float64)
    nbytes = (token_bytes[targets.clamp(min=0)] * keep).sum(dtype=torch.float64)
    return torch.stack([nats, keep.sum(dtype=torch.float64), nbytes])


def next_token_batches(
    batches: PackedBatches, document_mask: bool
) -> Callable[[int | None, slice], Iterator[TrainBatch]]:
    """Pretraining's validation: next-token TrainBatches of the split's fixed sample of windows."""

    def held_out(max_batches: int | None, rows: slice) -> Iterator[TrainBatch]:
        for window, docs in batches.sequential(max_batches, rows):
            targets = window[:, 1:].clone()
            targets[docs[:, 1:] != docs[:, :-1]] = -100  # never across a document boundary
            yield TrainBatch(window[:, :-1], targets, docs[:, :-1] if document_mask else None)

    return held_out


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    batches: Iterable[TrainBatch],
    *,
    device: torch.device,
    token_bytes: torch.Tensor,
    autocast: Callable[[], AbstractContextManager],
) -> dict | None:
    """{'val_loss', 'val_bpb'} over `batches` (this process's rows of each, summed over
    processes), or None when they have no targets. Attention takes the form training takes on
    the device (block masks on CUDA)."""
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in batches:
        batch = batch.to(device)
        packed = PackedAttention.of(batch.doc_ids, batch.bidirectional)
        with autocast():
            nll = model(batch.inputs, packed=packed, targets=batch.targets, reduction="none")
        sums += loss_sums(nll, batch.targets, token_bytes)
    model.train(was_training)
    nats, count, nbytes = distributed.all_reduce_sum(sums.tolist(), device)  # the one read
    if count == 0:
        return None
    return {"val_loss": nats / count, "val_bpb": nats / math.log(2) / max(nbytes, 1)}
