"""PPO rollouts: sample responses, then score every response token under the policy, the
reference and the value model, and every response under the reward model(s).

Llama 2 (Touvron et al., 2023, §3.2.3) samples from the current policy π, rewards each response
with R_c (its reward models' scores, herd/posttrain/ppo.py) and penalises the divergence from
the initial policy π_0. This module produces what that needs, one row per response:

    ids [B, T]         prompt + response tokens, right-padded (the padding is never read: causal
                       attention, and every read below stops at the row's last real token)
    index [B, R]       where response token j's prediction is read: position prompt_len − 1 + j
    response [B, R]    the sampled tokens (a row ends with its stop id, if it stopped)
    mask [B, R]        true on a row's response tokens (the stop id included: ending the turn
                       is an action the reward depends on)

Log-probabilities are of the logits divided by the sampling temperature, so that they are the
probabilities of the distribution the tokens were drawn from (TRL's PPO does the same); the
policy step computes its new log-probs the same way, so the ratio π/π_old is 1 at the start of
each rollout's first step. Values V(s_t) are read at the same positions as the log-probs: the
state before response token j (herd/posttrain/ppo_value.py).

Each reward model scores the response with its own tokenizer's chat formatting
(`conversation_ids`), as best-of-n does; a response that hit max_new_tokens without a stop id is
scored as it stands, and an empty one (the stop id first) as an empty assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from herd.posttrain.ppo_value import ValueModel


@dataclass
class Rollout:
    """One batch of sampled responses and everything PPO's updates read (tensors on the device;
    ids [B, T], lengths [B], the per-token ones [B, R])."""

    ids: torch.Tensor
    index: torch.Tensor
    lengths: torch.Tensor  # prompt + response tokens of each row
    response: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor  # whitened GAE advantages
    returns: torch.Tensor  # the value model's targets

    def rows(self, select: torch.Tensor) -> Rollout:
        """The rollout restricted to rows `select`, its token tensors cut to their longest row
        (so a mini-batch of short rows runs no padding)."""
        width = int(self.lengths[select].max())
        parts = {}
        for f in fields(self):
            value = getattr(self, f.name)[select]
            parts[f.name] = value[:, :width] if f.name == "ids" else value
        return Rollout(**parts)


def pack_responses(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [B, T], index [B, R], lengths [B], response [B, R], mask [B, R]) of prompt and
    response token lists. A row's index past its response is held at its last real position,
    so every read stays inside the row."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    R = max(len(r) for r in responses)
    ids = torch.full((len(prompts), max(lengths)), pad_id, dtype=torch.long)
    response = torch.full((len(prompts), R), pad_id, dtype=torch.long)
    index = torch.zeros((len(prompts), R), dtype=torch.long)
    mask = torch.zeros((len(prompts), R), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[b, : lengths[b]] = torch.tensor(p + r)
        response[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = True
        index[b] = (len(p) - 1 + torch.arange(R)).clamp(max=lengths[b] - 1)
    return tuple(  # type: ignore[return-value]
        t.to(device) for t in (ids, index, torch.tensor(lengths), response, mask)
    )


def response_logits(
    model, ids: torch.Tensor, index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Logits [B, R, V] (float32) predicting each response token, divided by the sampling
    temperature. The output projection runs on the response positions only: the prompt's
    [T, V] logits are never needed."""
    hidden = model(ids, hidden=True)
    at = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return model.output(at).float() / temperature


def token_logprobs(logits: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """log π(response token) [B, R] under `logits` [B, R, V]."""
    return F.log_softmax(logits, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)


def response_values(value_model: ValueModel, ids: torch.Tensor, index: torch.Tensor):
    """V(state before response token j) [B, R] (float32)."""
    return value_model(ids).gather(1, index)


@torch.no_grad()
def reward_probabilities(reward, messages: list[list[dict]], texts: list[str], batch_size: int):
    """sigmoid(score) [B] of each (prompt messages, response text) by a reward model (model,
    tokenizer): Llama 2 reads the scores as probabilities before combining them."""
    from herd.posttrain.reward import conversation_ids, reward_pad_id, score_sequences
    from herd.tokenizer.chat import encode_dialog

    model, tok = reward
    seqs = []
    for m, t in zip(messages, texts, strict=True):
        if t:
            seqs.append(conversation_ids(tok, m, t))
        else:
            # An empty reply (the policy ended its turn at once) is an action like any other and
            # needs a reward; conversation_ids refuses empty turns (training data must not have
            # them), the chat format itself encodes one.
            empty = [*m, {"role": "assistant", "content": ""}]
            seqs.append(encode_dialog(tok, empty, add_generation_prompt=False).ids)
    scores = score_sequences(model, seqs, batch_size, reward_pad_id(tok))
    return torch.sigmoid(torch.tensor(scores, dtype=torch.float64))


@torch.no_grad()
def score_tokens(
    policy,
    reference,
    value_model: ValueModel,
    ids: torch.Tensor,
    index: torch.Tensor,
    response: torch.Tensor,
    temperature: float,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(old log-probs, reference log-probs, values), each [B, R] float32, computed `batch_size`
    rows at a time. `reference` is a model, or a callable context manager giving one (LoRA: the
    policy with its adapters disabled)."""
    out: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, ids.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        x, at, tokens = ids[rows], index[rows], response[rows]
        out[0].append(token_logprobs(response_logits(policy, x, at, temperature), tokens))
        with reference() as ref:
            out[1].append(token_logprobs(response_logits(ref, x, at, temperature), tokens))
        out[2].append(response_values(value_model, x, at))
    return tuple(torch.cat(o) for o in out)  # type: ignore[return-value]
