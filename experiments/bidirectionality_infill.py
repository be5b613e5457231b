"""Infilling evaluation of experiments/bidirectionality.py: held-out pieces with one span each,
scored teacher-forced in the masked objectives' prompt format and as a prefix-only continuation,
and greedy infilling by herd's generator.

Every model sees the same pieces and spans. Models trained with bidirectional attention (nxtpre,
mskbi) are scored attending as they were trained: the prompt's context both ways.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from herd.checkpoint.convert import load
from herd.data.objectives import OBJECTIVES, ObjectiveConfig, infill_prompt, sample_spans
from herd.data.shards import TokenShards
from herd.errors import HerdError
from herd.generation import generate
from herd.model.masks import PackedAttention


def infill_pieces(
    data: TokenShards, length: int, count: int, seed: int
) -> list[tuple[list[int], tuple[int, int]]]:
    """`count` held-out pieces of exactly `length` tokens, each with the one span to infill.

    Pieces are consecutive, non-overlapping cuts of held-out documents (a document's first piece
    starts with BOS, like a training window that starts a document; the rest start mid-file, like
    most training windows). Spans follow the training rule for a piece of this length, so the span
    length (15% of the inner tokens) is one the masked models were trained on.
    """
    starts = []
    shards = data.shards("val")
    for s, (_, offsets) in enumerate(shards):
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            starts += [(s, i) for i in range(a, b - length + 1, length)]
    if not starts:
        raise HerdError(f"the held-out split has no document of {length} tokens to infill")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(starts), generator=generator)[:count].sort().values.tolist()
    rule = ObjectiveConfig(name="mskbi")  # the trainer's span settings: one span, 15%
    pieces = []
    for k in chosen:
        s, i = starts[k]
        tokens = [int(t) for t in shards[s][0][i : i + length]]
        spans = sample_spans(length, rule, generator)
        pieces.append((tokens, spans[0]))
    return pieces


def sentinel_example(tokens: list[int], span: tuple[int, int], sentinels: list[int]):
    """(sequence, first scored index, bidirectional region) in the masked objectives' format."""
    prompt = infill_prompt(tokens, [span], sentinels)
    # Training marks the context (everything before the appended sentinel) as bidirectional.
    return prompt + tokens[span[0] : span[1]], len(prompt), len(prompt) - 1


def prefix_example(tokens: list[int], span: tuple[int, int]):
    """(sequence, first scored index, bidirectional region): continue the text before the span."""
    return tokens[: span[1]], span[0], span[0]


@torch.no_grad()
def teacher_forced(model, examples: list, bidirectional: bool, batch_size: int = 32) -> dict:
    """Per-token accuracy, exact match and loss of the scored tokens of every example.

    An example is (sequence, first, region): tokens sequence[first:] are scored, each from all
    tokens before it, and tokens before `region` attend both ways when `bidirectional`. Examples
    of different lengths are right-padded into a second packed document, which they cannot see.
    """
    hits, exact, nats, per_example = 0, 0, 0.0, []
    for b in range(0, len(examples), batch_size):
        batch = examples[b : b + batch_size]
        width = max(len(seq) for seq, _, _ in batch) - 1
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        docs = torch.ones(len(batch), width, dtype=torch.long)
        both = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, (seq, _, region) in enumerate(batch):
            inputs[r, : len(seq) - 1] = torch.tensor(seq[:-1])
            docs[r, : len(seq) - 1] = 0
            both[r, :region] = True
        packed = PackedAttention(docs, both if bidirectional else None)
        logits = model(inputs, packed=packed).float()
        for r, (seq, first, _) in enumerate(batch):
            scored = logits[r, first - 1 : len(seq) - 1]
            target = torch.tensor(seq[first:])
            right = scored.argmax(-1) == target
            hits += int(right.sum())
            exact += bool(right.all())
            nats += float(F.cross_entropy(scored, target, reduction="sum"))
            per_example.append(float(right.float().mean()))
    n_tokens = sum(len(seq) - first for seq, first, _ in examples)
    mean = sum(per_example) / len(per_example)
    spread = sum((x - mean) ** 2 for x in per_example) / max(len(per_example) - 1, 1)
    return {
        "token_accuracy": hits / n_tokens,
        # standard error over pieces (all pieces score the same number of tokens)
        "token_accuracy_se": math.sqrt(spread / len(per_example)),
        "exact_match": exact / len(examples),
        "loss": nats / n_tokens,
        "tokens_scored": n_tokens,
    }


def greedy_fill(model, prompt: list[int], n_new: int, region: int, bidirectional: bool):
    """Greedy continuation of `prompt` by herd's generator (what `herd generate --infill` runs):
    the prompt's first `region` tokens attend both ways in the prefill when `bidirectional`, as a
    bidirectional-attention model was trained, then decoding is causal over the KV cache."""
    return generate(model, prompt, n_new, bidirectional_prefix=region if bidirectional else 0)


def evaluate_infilling(checkpoint: str, objective: str, pieces: list, sentinels: list[int]):
    model = load(checkpoint)
    model.eval()
    bidirectional = OBJECTIVES[objective][1]  # attend as the model was trained to
    sentinel = [sentinel_example(t, s, sentinels) for t, s in pieces]
    prefix = [prefix_example(t, s) for t, s in pieces]
    return model, {
        "infill": teacher_forced(model, sentinel, bidirectional),
        "prefix_only": teacher_forced(model, prefix, bidirectional),
    }
