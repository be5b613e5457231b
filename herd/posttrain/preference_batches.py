"""Batches of preference pairs for DPO: prompt + chosen and prompt + rejected, right-padded.

A pair is one row on each side: the prompt's tokens followed by the response's, with a mask that
is 1 on the response tokens DPO scores (herd/data/chat_data.py masks headers and terminators
out). Each side is right-padded to the longest row of its micro-batch; `PairBatch.index` names the
pairs so their reference log-probabilities (computed once, herd/posttrain/dpo.py) can be looked up.

Order and resume are `herd.data.epoch_order.EpochOrder`'s, as for pretraining: each epoch
visits the pairs in a permutation seeded by (seed, epoch), the cursor (epoch, index) is the whole
state, and a process builds only its own rows of each global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from herd.data.epoch_order import EpochOrder
from herd.errors import HerdError


@dataclass
class PairBatch:
    """B preference pairs: ids and masks [B, T] of each side, and the pairs' indices [B]."""

    chosen_ids: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_ids: torch.Tensor
    rejected_mask: torch.Tensor
    index: torch.Tensor

    def map(self, fn) -> PairBatch:
        return PairBatch(*(fn(t) for t in self.tensors()))

    def to(self, device: torch.device, non_blocking: bool = False) -> PairBatch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            self.chosen_ids,
            self.chosen_mask,
            self.rejected_ids,
            self.rejected_mask,
            self.index,
        )

    def loss_count(self) -> int:
        """What the step's loss is averaged over: pairs."""
        return int(self.index.numel())


def _side(rows: list[tuple[list[int], list[int]]], pad_id: int):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (tokens, scored) in enumerate(rows):
        ids[r, : len(tokens)] = torch.tensor(tokens)
        mask[r, : len(scored)] = torch.tensor(scored)
    return ids, mask


def pair_batch(examples: Sequence, indices: Sequence[int], pad_id: int = 0) -> PairBatch:
    """The PairBatch of `examples[i]` for i in `indices` (DPOExample-like objects)."""
    chosen, rejected = [], []
    for i in indices:
        e = examples[i]
        prompt = [0] * len(e.prompt_ids)
        chosen.append((e.prompt_ids + e.chosen_ids, prompt + e.chosen_mask))
        rejected.append((e.prompt_ids + e.rejected_ids, prompt + e.rejected_mask))
    return PairBatch(*_side(chosen, pad_id), *_side(rejected, pad_id), torch.tensor(list(indices)))


class PreferenceBatches:
    """The BatchSource of a DPO run: shuffled, resumable batches of preference pairs."""

    def __init__(self, examples: Sequence, batch_size: int, seed: int = 0, pad_id: int = 0) -> None:
        if len(examples) < batch_size:
            raise HerdError(
                f"{len(examples)} preference pairs, fewer than one batch of {batch_size}; "
                "lower data.batch_size"
            )
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.order = EpochOrder(len(examples), seed)

    def next_micro_batch(self, rows: slice | None = None) -> PairBatch:
        """The next batch's `rows` (all by default), advancing past the whole batch."""
        drawn = [self.order.advance() for _ in range(self.batch_size)]
        return pair_batch(self.examples, drawn[rows or slice(None)], self.pad_id)

    def in_order(self, batch_size: int | None = None) -> Iterator[PairBatch]:
        """Every pair once, in data order (reference log-probabilities); the cursor stays."""
        size = batch_size or self.batch_size
        for start in range(0, len(self.examples), size):
            stop = min(start + size, len(self.examples))
            yield pair_batch(self.examples, range(start, stop), self.pad_id)

    def skip(self, n_batches: int) -> None:
        self.order.skip(n_batches * self.batch_size)

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


def pair_weighted_means(records: list) -> dict[str, float]:
    """Means of logged batch metrics, each batch weighted by its pairs: `records` is a list of
    (pairs, {name: 0-d tensor}); one host read for all of them."""
    import torch

    if not records:
        return {}
    names = list(records[0][1])
    weights = torch.tensor([n for n, _ in records], dtype=torch.float64)
    values = torch.stack([torch.stack([m[k].double() for k in names]) for _, m in records]).cpu()
    means = (values * weights[:, None]).sum(0) / weights.sum()
    return dict(zip(names, means.tolist(), strict=True))
