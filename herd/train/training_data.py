"""What a run trains on: a tokenizer, a stream of training batches and validation windows.

The Trainer takes a `TrainingData` and knows nothing of where it came from: pretraining's comes
from `herd data prepare` shards under the run's objective (`pretraining_data`), post-training
stages (herd/posttrain/) build theirs from conversations and preference pairs. Everything else
(the loop, checkpoints, resume, FSDP2, metrics, stability) is the same engine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from herd.data.batches import PackedBatches
from herd.data.loader import BatchSource, ObjectiveBatches
from herd.data.objectives import TrainBatch, tokenizer_sentinels
from herd.data.shards import TokenShards
from herd.errors import HerdError
from herd.tokenizer import Tokenizer
from herd.train.config import RunConfig
from herd.train.validation import next_token_batches


@dataclass
class TrainingData:
    """What a run trains on: the tokenizer (saved with every checkpoint), the training batches,
    and the held-out batches: `val(max_batches, rows)` yields this process's rows of the same
    batches at every evaluation (None: no validation). Pretraining's come from `herd data
    prepare` shards (`pretraining_data`); post-training stages build their own."""

    tokenizer: Tokenizer
    source: BatchSource
    val: Callable[[int | None, slice], Iterable[TrainBatch]] | None
    # A loss other than the cross-entropy of the batches' targets (DPO): `prepare(model, rank,
    # device, fresh)` before the first step (fresh: a new run, not a resumed one),
    # `loss_sum(model, micro)`, `read_metrics()` at log steps.
    objective: Any = None


def pretraining_data(run: RunConfig, rank: int = 0) -> TrainingData:
    """Packed windows of a prepared shard folder under the run's objective, and its val split."""
    d = run.data
    shards = TokenShards(d.path)
    tokenizer = shards.tokenizer()
    train = PackedBatches(shards, "train", d.batch_size, d.seq_len, d.seed)
    try:
        val = PackedBatches(shards, "val", d.batch_size, d.seq_len, d.seed)
    except HerdError as e:
        # Training goes on without validation lines; the user is told why.
        val = None
        if rank == 0:
            print(f"warning: no validation: {e}", file=sys.stderr)
    source = ObjectiveBatches(train, d, tokenizer_sentinels(tokenizer))
    held_out = None if val is None else next_token_batches(val, d.document_mask)
    return TrainingData(tokenizer, source, held_out)
