"""The temporal aggregator of Llama 3's video adapter (paper section 7.2): a perceiver resampler.

Each sampled frame goes through the image encoder; the aggregator then merges every `merge`
consecutive frames (32 in the paper; 16 -> 1 in pre-training) into one "frame" of `latents`
tokens, which the video cross-attention layers read. It is a perceiver resampler (Jaegle et al.
2021, as Flamingo uses it, Alayrac et al. 2022):

    x       = frame tokens of a group [merge * tokens, dim], each frame's plus its time embedding
    latents = learned queries [latents, dim]
    repeat `layers` times:
        latents = latents + Attn(q = LN(latents), kv = [LN(x); LN(latents)])
        latents = latents + FFN(LN(latents))           (GELU, 4 x dim)
    out     = LN(latents)

Attention over the group's tokens is over a set: the only order the aggregator sees is the time
embedding of each frame within its group (so it can tell a shape moving left from one moving
right), and groups are merged independently. A clip's last group may be partial: its missing
frames are masked out (`frames` [B] counts the real ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResamplerLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int, eps: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.x_norm = nn.LayerNorm(dim, eps=eps)
        self.latent_norm = nn.LayerNorm(dim, eps=eps)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, latents: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [G, L, dim] (keep [G, L]: real tokens), latents [G, R, dim] -> latents."""
        G, R, D = latents.shape
        h = self.latent_norm(latents)
        kv = torch.cat([self.x_norm(x), h], dim=1)
        mask = torch.cat([keep, keep.new_ones(G, R)], dim=1)[:, None, None, :]

        def heads(t):
            return t.view(G, -1, self.n_heads, D // self.n_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.wq(h)), heads(self.wk(kv)), heads(self.wv(kv)), attn_mask=mask
        )
        latents = latents + self.wo(out.transpose(1, 2).reshape(G, R, D))
        return latents + self.ffn(self.ffn_norm(latents))


class TemporalAggregator(nn.Module):
    """frame tokens [B, F, tokens, dim] and real frames [B] -> [B, ceil(F / merge), latents, dim]:
    every `merge` consecutive frames merged into `latents` tokens."""

    def __init__(
        self, dim: int, merge: int, latents: int, layers: int, n_heads: int, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.merge = merge
        self.latents = nn.Parameter(torch.randn(latents, dim) * 0.02)
        self.time = nn.Parameter(torch.randn(merge, dim) * 0.02)  # a frame's place in its group
        self.layers = nn.ModuleList(ResamplerLayer(dim, n_heads, eps) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, frames: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        B, F_, S, D = frames.shape
        groups = -(-F_ // self.merge)
        pad = groups * self.merge - F_
        if pad:
            frames = torch.cat([frames, frames.new_zeros(B, pad, S, D)], dim=1)
        counts = torch.full((B,), F_, device=frames.device) if counts is None else counts
        real = torch.arange(groups * self.merge, device=frames.device) < counts.unsqueeze(1)
        x = frames.view(B, groups, self.merge, S, D) + self.time[:, None, :]
        x = x.reshape(B * groups, self.merge * S, D)
        keep = real.view(B, groups, self.merge, 1).expand(B, groups, self.merge, S)
        keep = keep.reshape(B * groups, self.merge * S)
        # a group with no real frame (past a short clip) attends to its latents alone
        latents = self.latents.expand(B * groups, -1, -1)
        for layer in self.layers:
            latents = layer(x, latents, keep)
        return self.norm(latents).view(B, groups, -1, D)
