"""Run-config options of the data pipeline reach the batches: span settings of the masked
objectives, and validation on a fixed random sample of the held-out split."""

from __future__ import annotations

import torch

from herd.data.batches import PackedBatches
from herd.data.config import DataConfig
from herd.data.objectives import IGNORE_INDEX, make_batch
from herd.data.shards import TokenShards
from tests.unit.test_trainer import data  # noqa: F401 - the shared prepared-shards fixture

SENTINELS = [900, 901, 902, 903]


def _window():
    # two documents of 20 tokens (ids 10..29 and 40..59) packed into one window of 41 tokens
    tokens = torch.cat([torch.arange(10, 30), torch.arange(40, 61)])[None]
    docs = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(21, dtype=torch.long)])[None]
    return tokens, docs


def test_span_settings_reach_the_objective():
    tokens, docs = _window()
    seeds = [0]  # one row, one seed
    one = DataConfig(objective="mskuni", n_spans=1, mask_fraction=0.2, end_marker=True)
    batch = make_batch(tokens, docs, one, seeds, SENTINELS)
    kept = batch.targets[batch.targets != IGNORE_INDEX].tolist()
    assert SENTINELS[1] in kept  # the end marker closes the span, so it is predicted
    assert batch.doc_ids is not None and batch.bidirectional is None
    two = DataConfig(objective="mskuni", n_spans=2, mask_fraction=0.3, end_marker=False)
    row = make_batch(tokens, docs, two, seeds, SENTINELS).inputs[0].tolist()
    assert row.count(SENTINELS[0]) >= 1 and row.count(SENTINELS[1]) >= 1
    assert SENTINELS[2] not in row  # no end marker asked for
    plain = DataConfig(objective="nxtuni", document_mask=False)
    batch = make_batch(tokens, docs, plain, seeds, SENTINELS)
    assert batch.doc_ids is None and torch.equal(batch.inputs, tokens[:, :-1])


def test_validation_sample_is_fixed_and_spread(data):  # noqa: F811
    val = PackedBatches(TokenShards(data), "val", batch_size=2, seq_len=8, seed=3)
    assert val.n_windows >= 8
    first = [w.clone() for w, _ in val.sequential(2)]
    again = [w.clone() for w, _ in val.sequential(2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    sampled = torch.cat(first)
    head = torch.stack([val.window(i)[0] for i in range(4)])
    assert not torch.equal(sampled, head)  # not simply the first windows in stored order
    everything = sum(1 for _ in val.sequential())
    assert everything == val.n_windows // 2
