"""Per-row sampling for a batch of unrelated requests: each row its own temperature, top-k, top-p,
seed and (optionally) a constraint on the next token.

Randomness is counter-based: the exponential race noise for (seed, step, token) is a hash of those
three integers, computed with tensor ops on the device. So a seeded request draws the same noise
whatever else is in the batch and in whichever slot it runs (reproducible), and a batch needs no
per-row generator objects or host syncs. argmax(p / E) with E ~ Exp(1) is a sample from p (the
same exponential-race trick as herd.generation.sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

_M32 = 0xFFFFFFFF


class Constraint(Protocol):
    """Grammar-constrained decoding (JSON schema, regex): which tokens may come next.

    The engine calls `allowed` before sampling each token of the request and masks the rest,
    `advance` with the token sampled, and ends the request (finish_reason "stop") once `finished`.
    """

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """BoolTensor [vocab_size]: True for tokens allowed next."""
        ...

    def advance(self, token_id: int) -> None: ...

    def finished(self) -> bool: ...


@dataclass
class SamplingParams:
    """How one request samples and when it ends (besides the tokenizer's stop tokens)."""

    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None: the engine draws one
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None = off; k = the chosen token's and the k likeliest
    # OpenAI's: each generated token's logit less frequency_penalty x its count so far and
    # presence_penalty once it has appeared; logit_bias added per token id
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    constraint: Constraint | None = None

    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


def adjust_logits(logits: torch.Tensor, params: SamplingParams, generated: list[int]) -> None:
    """Apply one row's penalties and logit bias to its logits [V] in place."""
    if generated and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(generated, device=logits.device)
        counts = torch.bincount(ids, minlength=logits.shape[-1]).to(logits.dtype)
        logits -= counts * params.frequency_penalty + (counts > 0) * params.presence_penalty
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        bias = torch.tensor(list(params.logit_bias.values()), device=logits.device)
        logits.index_add_(0, ids, bias.to(logits.dtype))


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """An integer mixing function on values in [0, 2**32) (int64 tensors; multipliers below 2**31
    so no product overflows int64)."""
    x = (x ^ (x >> 16)) & _M32
    x = (x * 0x7FEB352D) & _M32
    x = (x ^ (x >> 15)) & _M32
    x = (x * 0x1B873593) & _M32
    return x ^ (x >> 16)


def race_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) noise [B, vocab] that depends only on each row's (seed, step) and the token id."""
    row = _hash32((_hash32(seeds & _M32) + steps) & _M32).unsqueeze(1)
    ids = torch.arange(vocab, device=seeds.device).unsqueeze(0)
    h = _hash32(row ^ ids)
    uniform = ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))  # in (0, 1), never 0
    return -torch.log(uniform)


@dataclass
class BatchParams:
    """The sampling parameters of the rows of one step, as device tensors."""

    temperature: torch.Tensor  # [B] float, 0 = greedy
    top_k: torch.Tensor  # [B] long, 0 = off
    top_p: torch.Tensor  # [B] float
    seeds: torch.Tensor  # [B] long
    steps: torch.Tensor  # [B] long: tokens this request has sampled so far
    filtered: bool  # any row with top-k or top-p (else the sort is skipped)
    all_greedy: bool  # known on the host, so the all-greedy step skips the noise without a sync


def batch_params(rows: list[tuple[SamplingParams, int, int]], device) -> BatchParams:
    """BatchParams from (params, seed, step) per row."""
    return BatchParams(
        temperature=torch.tensor([p.temperature for p, _, _ in rows], device=device),
        top_k=torch.tensor([p.top_k for p, _, _ in rows], device=device),
        top_p=torch.tensor([p.top_p for p, _, _ in rows], device=device),
        seeds=torch.tensor([s for _, s, _ in rows], device=device),
        steps=torch.tensor([n for _, _, n in rows], device=device),
        filtered=any(p.top_k > 0 or p.top_p < 1.0 for p, _, _ in rows),
        all_greedy=all(p.temperature <= 0 for p, _, _ in rows),
    )


def sample_rows(logits: torch.Tensor, bp: BatchParams) -> torch.Tensor:
    """Next token per row [B] from logits [B, V]: greedy rows take the argmax, the others sample
    from softmax(logits / T) restricted to their top-k and top-p tokens."""
    best = logits.argmax(dim=-1)
    if bp.all_greedy:
        return best
    greedy = bp.temperature <= 0
    temperature = torch.where(greedy, torch.ones_like(bp.temperature), bp.temperature)
    scaled = logits.float() / temperature.unsqueeze(1)
    noise = race_noise(bp.seeds, bp.steps, logits.shape[-1])
    if bp.filtered:
        scaled, order = torch.sort(scaled, dim=-1, descending=True)
        noise = noise.gather(1, order)
        rank = torch.arange(scaled.shape[-1], device=scaled.device).unsqueeze(0)
        k = torch.where(bp.top_k > 0, bp.top_k, scaled.shape[-1]).unsqueeze(1)
        probs = torch.softmax(scaled, dim=-1)
        # Drop a token when those ranked above it already cover top_p; the top one always stays.
        drop = (rank >= k) | ((torch.cumsum(probs, dim=-1) - probs) > bp.top_p.unsqueeze(1))
        scaled = scaled.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    choice = (probs / noise).argmax(dim=-1)
    if bp.filtered:
        choice = order.gather(1, choice.unsqueeze(1)).squeeze(1)
    return torch.where(greedy, best, choice)


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, top: int
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """The model's log-probability of each row's token, and its `top` likeliest (id, logprob)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
    alternatives: list[list[tuple[int, float]]] = [[] for _ in chosen]
    if top > 0:
        values, ids = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)
        alternatives = [
            list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        ]
    return chosen, alternatives
