"""Gated cross-attention from text to image tokens, and which images each text token sees.

Llama 3.2 Vision inserts a cross-attention layer before some of the text model's blocks:

    h   = x + tanh(g_attn) * XAttn(RMSNorm(x), image tokens)
    out = h + tanh(g_mlp)  * SwiGLU(RMSNorm(h))

Both gates start at 0, so an untrained adapter leaves the text model exactly as it was (the
adapter is trained with the text model frozen, Llama 3 paper section 7). The attention is
grouped-query like the text model's, with an RMSNorm on each head of q and k and no RoPE (image
tokens carry their positions from the encoder).

Which images a text token sees (`image_visibility`): each image from its <|image|> token up to the
next image's token; images whose tokens stand in a row (<|image|><|image|>...) are all seen until
the next run of image tokens starts, as transformers' processor builds the mask
(`get_cross_attention_token_mask`). Only the tiles an image uses are read.

Rows that see no image - tokens before the first <|image|>, or a row without images - get no
cross-attention output at all: both the attention and the MLP branch are zeroed there, as Meta's
reference does. transformers zeroes only the MLP branch, so its attention branch there averages
over every image token and leaks the images into text that comes before them (transformers issue
#39379); herd follows Meta, and its logits before the first image equal the text model's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.config import ModelConfig
from herd.model.linear import Linear
from herd.model.transformer import FeedForward, RMSNorm


def image_visibility(
    tokens: torch.Tensor, image_token_id: int, num_images: int | None = None
) -> torch.Tensor:
    """BoolTensor [B, T, N]: whether token t of row b sees the row's image n (the n-th <|image|>
    token's image); N is `num_images`, or the most image tokens in a row.

    Image n is seen from its token p_n on while no later run of image tokens has started: with
    run(t) the number of runs of consecutive image tokens that start at or before t, token t sees
    image n when t >= p_n and run(t) == run(p_n). One image: from its token to the end. Tokens
    before the first image see none."""
    B, T = tokens.shape
    is_image = tokens == image_token_id
    starts = is_image.clone()
    starts[:, 1:] &= ~is_image[:, :-1]
    run = starts.long().cumsum(dim=1)  # [B, T]
    if num_images is None:
        num_images = int(is_image.sum(dim=1).max())
    positions = torch.arange(T, device=tokens.device).expand(B, T)
    # image token positions in order, then T for image slots the row has no token for
    order = torch.where(is_image, positions, torch.full_like(positions, T)).sort(dim=1).values
    order = F.pad(order, (0, max(0, num_images - T)), value=T)[:, :num_images]  # [B, N]
    image_run = run.gather(1, order.clamp(max=T - 1))
    seen = (positions.unsqueeze(2) >= order.unsqueeze(1)) & (
        run.unsqueeze(2) == image_run.unsqueeze(1)
    )
    return seen & (order < T).unsqueeze(1)


def cross_attention_mask(
    visible: torch.Tensor, tile_mask: torch.Tensor, patches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, 1, T, N * tiles * patches], seeing [B, T, 1]) from which images each token sees
    `visible` [B, T, N] and which tiles each image uses `tile_mask` [B, N, tiles].

    `seeing` is 1.0 where a token sees any image tile, else 0.0: the cross-attention output is
    multiplied by it (module doc). Rows that see nothing are given an all-true mask, since
    attention over no keys is undefined (NaN), and their output is then zeroed."""
    tiles = visible.unsqueeze(-1) & tile_mask.unsqueeze(1)  # [B, T, N, tiles]
    seeing = tiles.flatten(2).any(dim=-1, keepdim=True)  # [B, T, 1]
    keys = tiles.unsqueeze(-1).expand(*tiles.shape, patches).flatten(2)  # [B, T, L]
    mask = keys | ~seeing
    return mask.unsqueeze(1), seeing.to(torch.float32)


class CrossAttention(nn.Module):
    """Grouped-query attention from text queries to image keys and values, with per-head RMSNorm
    on q and k and no positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.n_heads,
            config.n_kv_heads,
            config.head_dim,
        )
        self.wq = Linear(config.dim, config.n_heads * config.head_dim)
        self.wk = Linear(config.dim, config.n_kv_heads * config.head_dim)
        self.wv = Linear(config.dim, config.n_kv_heads * config.head_dim)
        self.wo = Linear(config.n_heads * config.head_dim, config.dim)
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps)

    def keys_values(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, n_kv_heads, L, head_dim] of image tokens [B, L, dim]: computed once per set
        of images and reused by every later text token (the cross-attention KV cache)."""
        B, L, _ = images.shape
        k = self.k_norm(self.wk(images).view(B, L, self.n_kv_heads, self.head_dim))
        v = self.wv(images).view(B, L, self.n_kv_heads, self.head_dim)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k, v = kv
        gqa = self.n_kv_heads != self.n_heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class CrossAttentionBlock(nn.Module):
    """x + tanh(g_attn) * XAttn(RMSNorm(x)), then + tanh(g_mlp) * SwiGLU(RMSNorm(.)), both
    branches zeroed on rows that see no image (module doc)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = CrossAttention(config)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn = FeedForward(config.dim, config.ffn_dim)
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        seeing: torch.Tensor,
    ) -> torch.Tensor:
        seeing = seeing.to(x.dtype)
        x = x + self.attn_gate.tanh() * (self.attn(self.attn_norm(x), kv, mask) * seeing)
        return x + self.ffn_gate.tanh() * (self.ffn(self.ffn_norm(x)) * seeing)
