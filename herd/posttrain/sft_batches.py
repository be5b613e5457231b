"""Packed SFT batches: whole dialogues in rows of `seq_len` positions, resumable like PackedBatches.

A dialogue of n tokens fills n - 1 positions of a row: inputs ids[:-1], targets ids[1:] where the
loss mask of the target token is 1 (the assistant's tokens) and IGNORE_INDEX elsewhere, so no
target ever crosses a dialogue boundary. Its doc id is its place in the row (0, 1, ...): attention
stays within the dialogue and positions restart at its first token (`PackedAttention`). The row's
unused tail is padding (`pad_id` inputs, IGNORE_INDEX targets) with a doc id of its own.

Packing rule: best-fit decreasing, once, over the whole dataset. Dialogues are taken longest first
(ties in dataset order), each into the open row with the least room that still fits it (ties: the
lower row), else into a new row; a dialogue is never split. Within a row, dialogues keep dataset
order. Best-fit decreasing wastes far less padding than packing in order, and depends on nothing
random, so the rows are the same on every run and machine.

Each epoch visits the rows in a permutation seeded by (seed, epoch); the cursor (epoch, index) is
the whole state, so a resumed run draws exactly the batches an uninterrupted one would. As in
`herd.data.batches.PackedBatches`, `next_micro_batch(rows)` builds only the rows a process owns and moves
the cursor past the whole batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from herd.data.epoch_order import EpochOrder
from herd.data.objectives import IGNORE_INDEX, TrainBatch
from herd.errors import HerdError


def pack_dialogues(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of dialogue indices, best-fit decreasing; dialogue i takes lengths[i] positions."""
    too_long = [i for i, n in enumerate(lengths) if n > capacity or n < 1]
    if too_long:
        i = too_long[0]
        raise HerdError(f"dialogue {i} takes {lengths[i]} positions; a row has 1 to {capacity}")
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free positions, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            free, r = room.pop(at)
        else:
            free, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(room, (free - n, r))
    return [sorted(r) for r in rows]


class SFTBatches:
    """Batches of packed dialogues (objects with `ids` and `mask`, e.g. `SFTExample`)."""

    def __init__(
        self, examples: Sequence, batch_size: int, seq_len: int, seed: int = 0, pad_id: int = 0
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise HerdError(f"batch_size {batch_size} and seq_len {seq_len} must be positive")
        self.examples = examples
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        lengths = []
        for e in examples:
            if len(e.ids) != len(e.mask) or len(e.ids) < 2:
                raise HerdError(f"{getattr(e, 'source', '?')}: a dialogue needs 2+ tokens, a mask")
            lengths.append(len(e.ids) - 1)
        self.rows = pack_dialogues(lengths, seq_len)
        self.n_rows = len(self.rows)
        if self.n_rows < batch_size:
            raise HerdError(
                f"{len(examples)} dialogues pack into {self.n_rows} rows of {seq_len} positions, "
                f"fewer than one batch of {batch_size}; lower batch_size or seq_len"
            )
        self.order = EpochOrder(self.n_rows, seed)

    def row(self, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, doc_ids), each LongTensor [seq_len], of packed row r."""
        inputs, targets, docs = [], [], []
        for doc, i in enumerate(self.rows[r]):
            ids, mask = self.examples[i].ids, self.examples[i].mask
            inputs += ids[:-1]
            targets += [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]
            docs += [doc] * (len(ids) - 1)
        pad = self.seq_len - len(inputs)
        inputs += [self.pad_id] * pad
        targets += [IGNORE_INDEX] * pad
        docs += [len(self.rows[r])] * pad
        return torch.tensor(inputs), torch.tensor(targets), torch.tensor(docs)

    def next_micro_batch(self, rows: slice | None = None) -> TrainBatch:
        """The next batch's `rows` (all by default) as a TrainBatch [b, seq_len], advancing the
        cursor past the whole batch; only those rows are built."""
        keep = range(self.batch_size)[rows or slice(None)]
        parts = []
        for b in range(self.batch_size):
            r = self.order.advance()
            if b in keep:
                parts.append(self.row(r))
        inputs, targets, docs = (torch.stack(t) for t in zip(*parts, strict=True))
        return TrainBatch(inputs, targets, docs)

    def sequential(self, max_batches: int | None = None, rows: slice | None = None):
        """Validation: TrainBatches of the packed rows in order (the first `max_batches`
        batches), the same on every call; the cursor does not move."""
        n = self.n_rows // self.batch_size
        n = n if max_batches is None else min(n, max_batches)
        for b in range(n):
            chosen = range(b * self.batch_size, (b + 1) * self.batch_size)[rows or slice(None)]
            inputs, targets, docs = (
                torch.stack(t) for t in zip(*map(self.row, chosen), strict=True)
            )
            yield TrainBatch(inputs, targets, docs)

    def skip(self, n_batches: int) -> None:
        """Advance the cursor past `n_batches` batches, building nothing."""
        self.order.skip(n_batches * self.batch_size)

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
