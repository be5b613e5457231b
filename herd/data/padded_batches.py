"""A resumable stream of padded micro-batches of whole samples (adapter training data).

Image-text and audio-text samples are not packed: each is one batch row, padded by the caller's
`collate` (tokens to the batch's longest row; pictures or clips to its most per row). Each epoch
visits the samples in a seeded permutation (`EpochOrder`), and the cursor is the whole state, so a
run resumed from a checkpoint sees the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from herd.data.epoch_order import EpochOrder
from herd.data.objectives import IGNORE_INDEX
from herd.errors import HerdError


def padded_tokens(examples: Sequence, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [B, T] of samples with `ids` and a target `mask`: inputs ids[:-1],
    targets ids[1:] where the mask is 1 (else IGNORE_INDEX), right-padded to the longest."""
    T = max(len(e.ids) - 1 for e in examples)
    inputs = torch.full((len(examples), T), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.ids) - 1
        inputs[b, :n] = torch.tensor(e.ids[:-1])
        kept = [t if m else IGNORE_INDEX for t, m in zip(e.ids[1:], e.mask[1:], strict=True)]
        targets[b, :n] = torch.tensor(kept)
    return inputs, targets


class PaddedBatches:
    """Micro-batches of `batch_size` samples (a BatchSource), built by `collate(examples)`."""

    def __init__(
        self, examples: Sequence, batch_size: int, collate: Callable, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise HerdError(f"data.batch_size {batch_size} must be positive")
        if len(examples) < batch_size:
            raise HerdError(
                f"{len(examples)} samples, fewer than one batch of {batch_size}; lower batch_size"
            )
        self.examples, self.batch_size, self.collate = examples, batch_size, collate
        self.order = EpochOrder(len(examples), seed)

    def next_micro_batch(self, rows: slice | None = None):
        keep = range(self.batch_size)[rows or slice(None)]
        chosen = [self.order.advance() for _ in range(self.batch_size)]
        return self.collate([self.examples[chosen[b]] for b in keep])

    def sequential(self, max_batches: int | None = None, rows: slice | None = None):
        """Validation: the batches in dataset order (the first `max_batches`); no cursor."""
        n = len(self.examples) // self.batch_size
        n = n if max_batches is None else min(n, max_batches)
        for b in range(n):
            chosen = range(b * self.batch_size, (b + 1) * self.batch_size)[rows or slice(None)]
            yield self.collate([self.examples[i] for i in chosen])

    def skip(self, n_batches: int) -> None:
        self.order.skip(n_batches * self.batch_size)

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
