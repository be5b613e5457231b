"""The step loader: each process builds only its own rows (the same rows a single process would
build), one step ahead on a background thread, and its cursor resumes exactly."""

from __future__ import annotations

import pytest
import torch

from herd.data.batches import PackedBatches
from herd.data.config import DataConfig
from herd.data.loader import ObjectiveBatches, StepLoader
from herd.data.objectives import tokenizer_sentinels
from herd.data.shards import TokenShards
from tests.unit.test_trainer import data  # noqa: F401 - the shared prepared shards


def _loader(data, objective: str, rows: slice, batch: int = 4, accum: int = 2):  # noqa: F811
    shards = TokenShards(data)
    config = DataConfig(path=str(data), seq_len=32, batch_size=batch, objective=objective)
    batches = PackedBatches(shards, "train", batch, 32, seed=5)
    sentinels = tokenizer_sentinels(shards.tokenizer())
    return StepLoader(ObjectiveBatches(batches, config, sentinels), accum, rows)


def _fields(micro):
    return [micro.inputs, micro.targets, micro.doc_ids, micro.bidirectional]


@pytest.mark.parametrize("objective", ["nxtuni", "nxtpre", "mskuni", "mskbi"])
def test_a_process_builds_exactly_its_rows(data, objective, monkeypatch):  # noqa: F811
    whole = _loader(data, objective, slice(0, 4))
    reads = []
    real = PackedBatches.window
    monkeypatch.setattr(
        PackedBatches, "window", lambda self, w: reads.append(self) or real(self, w)
    )
    halves = [_loader(data, objective, slice(0, 2)), _loader(data, objective, slice(2, 4))]
    for _ in range(3):
        steps = [whole.next(), *(h.next() for h in halves)]
        full, first, second = steps
        assert full.counts.tolist() == (first.counts + second.counts).tolist()
        for m_full, m_a, m_b in zip(full.micro, first.micro, second.micro, strict=True):
            for f, a, b in zip(_fields(m_full), _fields(m_a), _fields(m_b), strict=True):
                if f is None:
                    assert a is None and b is None
                else:
                    assert torch.equal(f, torch.cat([a, b]))
    whole.close()
    for h in halves:
        h.close()
        # Its own windows only: at most 4 steps' worth (3 handed out, one ahead) of 2
        # micro-batches of 2 rows; the whole batch would be twice that.
        own = sum(1 for b in reads if b is h.batches.packed)
        assert 3 * 2 * 2 <= own <= 4 * 2 * 2


@pytest.mark.parametrize("objective", ["nxtuni", "mskbi"])
def test_batches_are_contiguous(data, objective):  # noqa: F811
    """Pinned and copied asynchronously only if contiguous: a strided view (next-token inputs
    are window[:, :-1]) would go to the device through an unpinned temporary, synchronously."""
    loader = _loader(data, objective, slice(0, 2))
    for micro in loader.next().micro:
        assert all(t.is_contiguous() for t in _fields(micro) if t is not None)
    loader.close()


def test_prefetching_does_not_move_the_resume_point(data):  # noqa: F811
    loader = _loader(data, "mskuni", slice(0, 4))
    loader.next()
    state = loader.state_dict()  # before the step that is being built ahead
    assert state == {"epoch": 0, "index": 8, "seed": 5}
    expected = [loader.next() for _ in range(2)]
    resumed = _loader(data, "mskuni", slice(0, 4))
    resumed.load_state_dict(state)
    for a, b in zip(expected, [resumed.next() for _ in range(2)], strict=True):
        assert torch.equal(a.micro[1].inputs, b.micro[1].inputs)
        assert torch.equal(a.micro[1].targets, b.micro[1].targets)
    # Skipping (a stability rewind) counts from the first step not handed out.
    loader.skip(3)
    assert loader.state_dict()["index"] == 24 + 3 * 4
    loader.close()
