"""The order a run visits its training items in: a seeded permutation per epoch, and a cursor.

Pretraining windows (herd/data/batches.py), packed SFT rows and DPO pairs
(herd/posttrain/) are all visited this way: each epoch in the permutation seeded by
(seed, epoch), the cursor (epoch, index) the whole state, so a resumed run draws exactly the items
an uninterrupted one would have drawn.
"""

from __future__ import annotations

import numpy as np
import torch


class EpochOrder:
    """Items 0..n-1, epoch after epoch, each epoch in its own seeded permutation."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        self.epoch, self.index = 0, 0
        self.order = self.permutation(0)

    def permutation(self, epoch: int) -> np.ndarray:
        # an array, not a list: a pretraining split may hold tens of millions of windows
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).numpy()

    def advance(self) -> int:
        """The next item; moves the cursor one item on (into the next epoch after the last)."""
        if self.index == self.n:
            self.epoch, self.index = self.epoch + 1, 0
            self.order = self.permutation(self.epoch)
        item = int(self.order[self.index])
        self.index += 1
        return item

    def skip(self, n_items: int) -> None:
        for _ in range(n_items):
            self.advance()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.order = self.permutation(self.epoch)
