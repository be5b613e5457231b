"""Log-likelihood scoring of continuations: the engine under every evaluation task.

A request is a context (token ids) and the continuations to score after it; the answer is, per
continuation, the summed log-probability of its tokens and whether greedy decoding would have
produced it. Two paths, chosen per request:

- every continuation is one token (multiple-choice letters " A".." D"): the continuation's
  probability is read off the logits at the context's last position, so one forward pass of the
  context scores all choices. Contexts are sorted by length and run in right-padded batches
  (causal attention: the padding after a row's last token cannot change that row's logits).
- otherwise the context runs once into a KV cache, the cache is copied to one row per
  continuation, and all continuations (minus their last token) run together as one batch from the
  context's end: the shared prefix is computed once, not once per choice.

Both equal scoring each full sequence independently (tests/unit/test_eval_scoring.py).
Token ids are produced by the callers with lm-evaluation-harness's convention (encode context and
context+continuation, split where the context's ids end), so scores match lm-eval's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from herd.model.cache import KVCache
from herd.model.transformer import Transformer


@dataclass
class Request:
    context: list[int]
    continuations: list[list[int]]


@dataclass
class Score:
    logprob: float  # sum over the continuation's tokens, natural log
    greedy: bool  # every token was the argmax given what precedes it
    tokens: int


def encode_pair(tokenizer, context: str, continuation: str, bos: bool, prefix: int):
    """(context ids, continuation ids) exactly as lm-eval's TemplateLM.loglikelihood and
    _encode_pair make them (lm_eval/api/model.py).

    An empty context becomes the prefix token (BOS). Otherwise all trailing whitespace of the
    context moves to the continuation (`str.rstrip()`: " ", "\\n", "\\t", ...); the context
    ids are the context's own encoding and the continuation ids are what follows as many ids in
    the encoding of the whole. Where the tokenizer merges across the boundary ("?" + "\\nA" ->
    "?\\n", "A") the continuation ids are then not what the context ids are followed by in
    the whole; lm-eval scores them after the context's own ids all the same, and so does herd.
    """
    if context == "":
        ids = tokenizer.encode(continuation)
        return ([prefix], ids) if not ids or ids[0] != prefix else (ids[:1], ids[1:])
    moved = len(context) - len(context.rstrip())
    if moved:
        context, continuation = context[:-moved], context[-moved:] + continuation
    whole = tokenizer.encode(context + continuation, bos=bos)
    context_ids = tokenizer.encode(context, bos=bos)
    return context_ids, whole[len(context_ids) :]


def _device(model: Transformer) -> torch.device:
    return model.embed.weight.device


@torch.no_grad()
def _single_token_batch(model: Transformer, contexts: Sequence[list[int]]) -> torch.Tensor:
    """log-softmax [B, vocab] at each context's last position (right-padded batch)."""
    width = max(len(c) for c in contexts)
    tokens = torch.zeros(len(contexts), width, dtype=torch.long)
    for i, c in enumerate(contexts):
        tokens[i, : len(c)] = torch.as_tensor(c)
    device = _device(model)
    last = torch.as_tensor([len(c) - 1 for c in contexts], device=device)
    logits = model(tokens.to(device), last=last)  # [B, vocab]: only the positions scored
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@torch.no_grad()
def _shared_prefix(model: Transformer, request: Request) -> list[Score]:
    """Context once into a cache, then every continuation in one batch from the cache."""
    device = _device(model)
    ctx, conts = request.context, request.continuations
    longest = max(len(c) for c in conts)
    total = len(ctx) + longest
    dtype = model.embed.weight.dtype
    single = KVCache(model.config, 1, total, device, dtype)
    logits = model(
        torch.as_tensor([ctx], device=device),
        input_pos=torch.arange(len(ctx), device=device),
        cache=single,
        last=torch.as_tensor([len(ctx) - 1], device=device),
    )
    first = torch.log_softmax(logits[0].float(), dim=-1)
    n = len(conts)
    scores = [[float(first[c[0]])] for c in conts]
    greedy = [[int(first.argmax()) == c[0]] for c in conts]
    if longest > 1:
        cache = KVCache(model.config, n, total, device, dtype)
        for layer in range(model.config.n_layers):
            cache.keys[layer][:, :, : len(ctx)] = single.keys[layer][:, :, : len(ctx)]
            cache.values[layer][:, :, : len(ctx)] = single.values[layer][:, :, : len(ctx)]
        steps = longest - 1
        tokens = torch.zeros(n, steps, dtype=torch.long)
        for i, c in enumerate(conts):
            tokens[i, : len(c) - 1] = torch.as_tensor(c[:-1])
        pos = torch.arange(len(ctx), len(ctx) + steps, device=device)
        out = torch.log_softmax(model(tokens.to(device), input_pos=pos, cache=cache).float(), -1)
        for i, c in enumerate(conts):
            rest = torch.as_tensor(c[1:], device=device)
            rows = out[i, : len(c) - 1]
            scores[i].append(float(rows.gather(1, rest[:, None]).sum()))
            greedy[i].append(bool((rows.argmax(-1) == rest).all()))
    return [Score(sum(s), all(g), len(c)) for s, g, c in zip(scores, greedy, conts, strict=True)]


def score_requests(
    model: Transformer,
    requests: Sequence[Request],
    batch_size: int = 8,
    progress=None,
) -> list[list[Score]]:
    """Scores for every continuation of every request, in request order.

    `progress` (a tqdm bar or None) advances by one per finished request.
    """
    limit = model.config.max_seq_len
    for r in requests:
        if not r.context or not r.continuations or not all(r.continuations):
            raise ValueError("every request needs a non-empty context and continuations")
        if len(r.context) + max(len(c) for c in r.continuations) - 1 > limit:
            raise ValueError(
                f"a request of {len(r.context)} context tokens does not fit the model's context "
                f"{limit}; truncate the context first (truncate_left)"
            )
    results: list[list[Score] | None] = [None] * len(requests)
    single = [i for i, r in enumerate(requests) if all(len(c) == 1 for c in r.continuations)]
    single.sort(key=lambda i: -len(requests[i].context))  # similar lengths share a batch
    for batch in _chunks(single, batch_size):
        logprobs = _single_token_batch(model, [requests[i].context for i in batch])
        for row, i in enumerate(batch):
            best = int(logprobs[row].argmax())
            results[i] = [
                Score(float(logprobs[row, c[0]]), best == c[0], 1)
                for c in requests[i].continuations
            ]
            if progress is not None:
                progress.update(1)
    for i, r in enumerate(requests):
        if results[i] is None:
            results[i] = _shared_prefix(model, r)
            if progress is not None:
                progress.update(1)
    return results  # type: ignore[return-value]


def truncate_left(context: list[int], continuation_len: int, limit: int) -> list[int]:
    """Drop the oldest context tokens so context + continuation fits `limit` (as lm-eval does)."""
    keep = limit - continuation_len + 1
    return context if len(context) <= keep else context[-keep:]


@torch.no_grad()
def rolling_nll(model: Transformer, tokens: list[int], prefix: int) -> float:
    """Summed negative log-likelihood (nats) of every token of `tokens` after `prefix`, over
    rolling windows of the model's context (perplexity and lm-eval's loglikelihood_rolling)."""
    device = _device(model)
    nats = 0.0
    for inputs, targets in rolling_windows(tokens, prefix, model.config.max_seq_len):
        nll = model(
            torch.as_tensor([inputs], device=device),
            targets=torch.as_tensor([targets], device=device),
            reduction="none",
        )
        nats += float(nll.sum())
    return nats


def rolling_windows(tokens: list[int], prefix: int, limit: int) -> Iterator[tuple[list, list]]:
    """(inputs, targets) windows that predict every token of `tokens` exactly once.

    The first window predicts tokens[:limit] after `prefix` (BOS); each later one predicts the next
    `limit` tokens or fewer, with as much preceding text as fits as context (lm-eval's rolling
    windows with context_len 1). Targets before the predicted part are -100.
    """
    seq = [prefix, *tokens]
    start = 0
    while start < len(tokens):
        end = min(start + limit, len(tokens))
        lo = max(0, end - limit)  # window of seq[lo : end] predicts seq[lo + 1 : end + 1]
        inputs = seq[lo:end]
        targets = [-100] * (start - lo) + tokens[start:end]
        yield inputs, targets
        start = end


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
