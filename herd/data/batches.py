"""Packed batches from token shards: deterministic, resumable windows with document ids.

The token stream of a split (documents stored back to back as BOS + tokens + EOS) is cut into
windows of `seq_len + 1` tokens with stride `seq_len` (a window's last token is the next window's
first, so every token is a target exactly once per epoch). Each epoch visits the windows in a
permutation seeded by (seed, epoch); the cursor (epoch, index) is the whole state, so a resumed
run draws exactly the batches the uninterrupted run would have drawn. Every drawn window also gets
a row seed from (seed, epoch, index), from which the objective draws that row's randomness.
"""

from __future__ import annotations

import numpy as np
import torch

from herd.data.epoch_order import EpochOrder
from herd.data.shards import TokenShards
from herd.errors import HerdError


class PackedBatches:
    def __init__(
        self, data: TokenShards, split: str, batch_size: int, seq_len: int, seed: int = 0
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise HerdError(f"batch_size {batch_size} and seq_len {seq_len} must be positive")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.shards = data.shards(split)
        counts = [max(0, (len(tokens) - 1) // seq_len) for tokens, _ in self.shards]
        self.n_windows = sum(counts)
        if self.n_windows < batch_size:
            raise HerdError(
                f"{data.folder}: split '{split}' has {self.n_windows} windows of {seq_len + 1} "
                f"tokens, fewer than one batch of {batch_size}; lower batch_size or seq_len"
            )
        self._shard_of = np.repeat(np.arange(len(counts)), counts)
        self._start_of = np.concatenate([np.arange(c) * seq_len for c in counts])
        self.order = EpochOrder(self.n_windows, seed)

    def window(self, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [seq_len + 1] of window w and the document index of each token."""
        tokens, offsets = self.shards[self._shard_of[w]]
        start = int(self._start_of[w])
        ids = np.asarray(tokens[start : start + self.seq_len + 1], dtype=np.int64)
        positions = np.arange(start, start + self.seq_len + 1)
        docs = np.searchsorted(offsets, positions, side="right") - 1
        return torch.from_numpy(ids), torch.from_numpy(docs.astype(np.int64))

    def _advance(self) -> tuple[int, int]:
        """The next window of the order and its row seed; moves the cursor one window on."""
        w = self.order.advance()
        # A function of the run's seed and the draw's place (epoch, index): the seed of this row's
        # objective randomness, the same whichever process or micro-batch builds the row.
        epoch, index = self.order.epoch, self.order.index - 1
        return w, ((self.seed * 1_000_003 + epoch) << 32 | index) & (2**63 - 1)

    def next_batch(self, rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(windows [b, T+1], doc_ids [b, T+1], row seeds [b]) of the next batch's `rows` (all
        by default), advancing the cursor past the whole batch; only those rows are read, so
        each process of a multi-process run reads just its own share."""
        rows = rows or slice(None)
        keep = range(self.batch_size)[rows]
        ids, docs, seeds = [], [], []
        for r in range(self.batch_size):
            w, seed = self._advance()
            if r in keep:
                tokens, doc = self.window(w)
                ids.append(tokens)
                docs.append(doc)
                seeds.append(seed)
        return torch.stack(ids), torch.stack(docs), seeds

    def skip(self, n_batches: int) -> None:
        """Advance the cursor past `n_batches` batches exactly as `next_batch` would, reading
        nothing (loss-spike recovery skips the data that follows a rewind)."""
        for _ in range(n_batches * self.batch_size):
            self._advance()

    def sequential(self, max_batches: int | None = None, rows: slice | None = None):
        """Evaluation batches: (windows, doc_ids) of each batch's `rows` (all by default), the
        same ones on every call.

        With `max_batches` the windows are a fixed random sample of the whole split (seeded by
        the run's seed), not its first windows: shards are stored in source order, so the first
        windows would all come from the first few files.
        """
        n = self.n_windows // self.batch_size
        if max_batches is None or max_batches >= n:
            order = np.arange(self.n_windows)
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 999_983)
            order = np.sort(
                torch.randperm(self.n_windows, generator=g).numpy()[: max_batches * self.batch_size]
            )
            n = max_batches
        for b in range(n):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            pairs = [self.window(int(w)) for w in batch[rows or slice(None)]]
            yield torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
