"""Each optimizer step's micro-batches for this process's rows, built one step ahead.

A step is `grad_accum` micro-batches of the global batch. Each process reads and transforms only
its own rows of every micro-batch (for the masked objectives that is a Python loop per document,
which would otherwise cost every process the whole global batch), on a background thread while
the device runs the previous step, into pinned memory on CUDA so that the copies to the device
are asynchronous (`TrainBatch.to(..., non_blocking=True)`).

Exactness: every row draws its objective randomness from its own seed (PackedBatches), so the
rows do not depend on which process builds them or on how the step is split into micro-batches.
The cursor a checkpoint stores (`state_dict`) is the one before the first step not yet handed
out, so prefetching never changes what a resumed run sees.

The micro-batches come from a `BatchSource`: pretraining's is `ObjectiveBatches` (packed windows
shaped by the run's objective); post-training supplies its own (whole dialogues, preference
pairs), and the loader, the trainer and resume stay the same.

Each step also carries the number of loss targets of every micro-batch: the trainer divides
every micro-batch's summed loss by the step's total (over all micro-batches and processes), so
that k accumulated micro-batches give exactly the gradient of one k-times larger batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

from herd.data.batches import PackedBatches
from herd.data.config import DataConfig
from herd.data.objectives import TrainBatch, make_batch


class BatchSource(Protocol):
    """An ordered, resumable stream of global micro-batches, of which a process builds its rows."""

    def next_micro_batch(self, rows: slice) -> TrainBatch:
        """The next global micro-batch's `rows`, advancing the cursor past all of it."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def skip(self, n_batches: int) -> None:
        """Advance the cursor past `n_batches` global micro-batches, reading nothing."""
        ...


class ObjectiveBatches:
    """Pretraining's BatchSource: packed windows (PackedBatches) under the run's objective."""

    def __init__(self, packed: PackedBatches, data: DataConfig, sentinels: Sequence[int]) -> None:
        self.packed, self.data, self.sentinels = packed, data, list(sentinels)

    def next_micro_batch(self, rows: slice) -> TrainBatch:
        window, docs, seeds = self.packed.next_batch(rows)
        return make_batch(window, docs, self.data, seeds, self.sentinels)

    def state_dict(self) -> dict:
        return self.packed.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.packed.load_state_dict(state)

    def skip(self, n_batches: int) -> None:
        self.packed.skip(n_batches)


@dataclass
class StepBatch:
    """A step's micro-batches and their loss-target counts (int64 [grad_accum], this process's
    rows only: the trainer sums them over processes)."""

    micro: list[TrainBatch]
    counts: torch.Tensor


class StepLoader:
    """Hands out StepBatches in order, preparing the next one on a background thread."""

    def __init__(
        self, batches: BatchSource, grad_accum: int, rows: slice, pin_memory: bool = False
    ) -> None:
        self.batches = batches
        self.grad_accum, self.rows, self.pin = grad_accum, rows, pin_memory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herd-data")
        self._ahead: tuple[dict, Future] | None = None  # (cursor before it, the step being built)

    def _build(self) -> StepBatch:
        micro, counts = [], []
        for _ in range(self.grad_accum):
            batch = self.batches.next_micro_batch(self.rows)
            # Contiguous before pinning: a strided view (next-token inputs are window[:, :-1])
            # would be copied to the device through an unpinned temporary, synchronously.
            mb = batch.map(torch.Tensor.contiguous)
            micro.append(mb.map(torch.Tensor.pin_memory) if self.pin else mb)
            counts.append(batch.loss_count())
        counts = torch.tensor(counts, dtype=torch.int64)
        return StepBatch(micro, counts.pin_memory() if self.pin else counts)

    def next(self) -> StepBatch:
        """This step's batch (waiting for it if it is still being built); starts the next one."""
        step = self._build() if self._ahead is None else self._ahead[1].result()
        self._ahead = (self.batches.state_dict(), self._pool.submit(self._build))
        return step

    def _discard_ahead(self) -> None:
        """Drop the step built ahead, putting the cursor back before it."""
        if self._ahead is not None:
            cursor, future = self._ahead
            self._ahead = None
            future.cancel()
            # Wait for it to finish with the cursor; an error it raised (a bad document, say)
            # comes back when that step is built again.
            with contextlib.suppress(Exception):
                future.result()
            self.batches.load_state_dict(cursor)

    def state_dict(self) -> dict:
        """The cursor before the first step not yet handed out."""
        return dict(self._ahead[0]) if self._ahead is not None else self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._discard_ahead()
        self.batches.load_state_dict(state)

    def skip(self, n_batches: int) -> None:
        """Pass over `n_batches` global micro-batches from the next step not handed out."""
        self._discard_ahead()
        self.batches.skip(n_batches)

    def close(self) -> None:
        self._discard_ahead()
        self._pool.shutdown(wait=True)
