"""The PPO value model: a transformer trunk with a scalar head giving V(s_t) at every position.

Llama 2 (§3.2.3) keeps the value model separate from the policy and initialises it from the
reward model: both read a prompt and a response and output a scalar, so the reward model's trunk
and scalar head are already a good estimate of the return (the score) from the first rollout.
A herd reward model is a Transformer whose output layer is that head (`ModelConfig.head =
"score"`, herd/posttrain/reward.py): `ValueModel(rm, rm.output)` is then the reward model itself,
a copy that PPO trains. `ValueModel(trunk)` on any other checkpoint (the SFT policy's, say) adds a
head that starts at zero, the whitened score's mean: a neutral baseline whose first steps only
learn the scale.

The trunk is read through `forward(..., hidden=True)`: the final-normed hidden states before the
output projection (herd/model/transformer.py), so a language-model trunk's vocabulary projection
is never computed (it is unused and gets no gradient). The head reads the hidden states in
float32 so that small differences between values survive a bf16 trunk."""

from __future__ import annotations

import torch
from torch import nn

from herd.model.masks import PackedAttention
from herd.model.transformer import Transformer


class ValueModel(nn.Module):
    """tokens [B, T] -> values [B, T] (float32): V of the state after each position's token."""

    def __init__(self, trunk: Transformer, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        dim = trunk.config.dim
        if head is None:
            head = nn.Linear(dim, 1, bias=False, device=trunk.embed.weight.device)
            nn.init.zeros_(head.weight)
        if head.in_features != dim or head.out_features != 1:
            raise ValueError(f"value head must map {dim} -> 1, got {head.in_features} -> 1")
        self.head = head.float()

    def forward(
        self,
        tokens: torch.Tensor,
        packed: PackedAttention | None = None,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values [B, T], or [B] at the positions `last` [B]. The value of the state before
        response token t (what PPO's advantage at t compares against) is read at position t − 1,
        as the policy's log-prob of that token is."""
        hidden = self.trunk(tokens, packed=packed, last=last, hidden=True)
        return self.head(hidden.float()).squeeze(-1)
