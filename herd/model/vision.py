"""Llama 3.2 Vision's image encoder: tiles of pixels -> image tokens at the text model's width.

An image arrives cut into up to `max_tiles` square tiles of `image_size` pixels (the layout, rows x
columns of tiles, is one of `aspect_ratios`, named by its aspect-ratio id: entry i is id i + 1, and
id 0 marks an empty image slot). Each tile becomes `patches` tokens: a class token and one token
per 14 x 14 patch (a convolution without bias, as in ViT, Dosovitskiy et al. 2021). Then:

1. a gated per-tile embedding of the layout ("pre-tile"), the class token, and a gated mix of a
   position embedding shared by all tiles and one specific to each tile of each layout;
2. LayerNorm, then `n_layers` pre-norm Transformer layers (LayerNorm, attention without RoPE,
   GELU MLP) over all the image's tiles together; the inputs of `feature_layers` are kept;
3. LayerNorm, a second gated layout embedding ("post-tile"), then `n_global_layers` layers whose
   attention and MLP outputs are scaled by tanh of a learnt gate;
4. each token's final output concatenated with its kept features (1280 x 6 = 7680 wide in the
   released model) and projected linearly, with bias, to the text model's width.

Every tile's token sequence is padded with zeros to a multiple of 8 (Meta's reference does, for its
kernels). The attention mask is Meta's (and transformers'): a query may read every key except when
both are padding (a padded position or a tile the image does not use), so real tokens also read
the padded ones; the outputs match the released weights only with that rule. Padding is removed
before the projection.

Parameter names follow herd's text model (wq/wk/wv/wo, attn_norm/ffn_norm);
herd/checkpoint/mllama.py maps them to and from transformers' names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.config import VisionConfig
from herd.model.linear import Linear

# Meta pads each tile's tokens to a multiple of 8; the weights were trained that way (above).
TOKEN_MULTIPLE = 8


class VisionAttention(nn.Module):
    """Multi-head self-attention without biases or positions (positions are added embeddings)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.wq = Linear(config.dim, config.dim)
        self.wk = Linear(config.dim, config.dim)
        self.wv = Linear(config.dim, config.dim)
        self.wo = Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (
            w(x).view(B, L, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(B, L, D))


class VisionFeedForward(nn.Module):
    """fc2(gelu(fc1 x)) with biases, the exact (erf) GELU as in CLIP's ViT."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm residual block; a gated block scales both branches by tanh(gate)."""

    def __init__(self, config: VisionConfig, gated: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = VisionAttention(config)
        self.ffn_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.ffn = VisionFeedForward(config)
        self.gated = gated
        if gated:
            self.attn_gate = nn.Parameter(torch.zeros(1))
            self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn = self.attn(self.attn_norm(x), mask)
        x = x + (self.attn_gate.tanh() * attn if self.gated else attn)
        ffn = self.ffn(self.ffn_norm(x))
        return x + (self.ffn_gate.tanh() * ffn if self.gated else ffn)


class TileEmbedding(nn.Module):
    """One learnt vector per tile of each layout, added to all of the tile's tokens, times
    tanh(gate): tells each tile where it sits in the image."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.max_tiles, self.dim = config.max_tiles, config.dim
        self.embed = nn.Embedding(len(config.aspect_ratios) + 1, config.max_tiles * config.dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        """x [images, tiles, tokens, dim]; aspect_ratio_ids [images]."""
        table = self.embed(aspect_ratio_ids).view(-1, self.max_tiles, 1, self.dim)
        return x + self.gate.tanh() * table


class PositionEmbedding(nn.Module):
    """(1 - tanh g) * a position table shared by every tile + tanh g * a table per tile of each
    layout: the gate moves the model from tile-local to image-wide positions."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.max_tiles, self.patches, self.dim = config.max_tiles, config.patches, config.dim
        self.embed = nn.Parameter(torch.zeros(config.patches, config.dim))
        layouts = len(config.aspect_ratios) + 1
        self.tile_embed = nn.Embedding(layouts, config.max_tiles * config.patches * config.dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        """x [images, tiles, patches, dim]; aspect_ratio_ids [images]."""
        gate = self.gate.tanh()
        tiles = self.tile_embed(aspect_ratio_ids).view(-1, self.max_tiles, self.patches, self.dim)
        return x + (1 - gate) * self.embed + gate * tiles


class VisionEncoder(nn.Module):
    """pixels [B, N, max_tiles, channels, S, S] -> image tokens [B, N * max_tiles * patches,
    text_dim], in image, tile, patch order (the order the cross-attention mask follows)."""

    def __init__(self, config: VisionConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.patch_embed = nn.Conv2d(
            config.channels, d, config.patch_size, stride=config.patch_size, bias=False
        )
        self.class_embed = nn.Parameter(torch.zeros(d))
        self.pre_tile = TileEmbedding(config)
        self.position = PositionEmbedding(config)
        # transformers builds these two with LayerNorm's default epsilon whatever norm_eps says
        self.norm_pre = nn.LayerNorm(d)
        self.layers = nn.ModuleList(
            VisionBlock(config, gated=False) for _ in range(config.n_layers)
        )
        self.norm_post = nn.LayerNorm(d)
        self.post_tile = TileEmbedding(config)
        self.global_layers = nn.ModuleList(
            VisionBlock(config, gated=True) for _ in range(config.n_global_layers)
        )
        self.projector = nn.Linear(config.feature_dim, text_dim)

    def forward(
        self, pixels: torch.Tensor, aspect_ratio_ids: torch.Tensor, tile_mask: torch.Tensor
    ) -> torch.Tensor:
        """pixels [B, N, max_tiles, C, S, S]; aspect_ratio_ids [B, N]; tile_mask [B, N, max_tiles]
        (True for the tiles an image uses)."""
        c = self.config
        B, N, tiles = pixels.shape[:3]
        images = B * N
        ids = aspect_ratio_ids.reshape(images)
        x = self.patch_embed(pixels.flatten(0, 2).to(self.patch_embed.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [images * tiles, patches - 1, dim]
        x = self.pre_tile(x.view(images, tiles, -1, c.dim), ids)
        cls = self.class_embed.expand(images, tiles, 1, c.dim)
        x = self.position(torch.cat([cls, x], dim=2), ids)  # [images, tiles, patches, dim]
        x = self.norm_pre(x)

        P = c.patches
        padded = -(-P // TOKEN_MULTIPLE) * TOKEN_MULTIPLE
        x = F.pad(x, (0, 0, 0, padded - P))  # zeros after the norm, as Meta's reference
        mask = _encoder_mask(tile_mask.reshape(images, tiles), P, padded)

        x = x.view(images, tiles * padded, c.dim)
        kept = {}
        for i, layer in enumerate(self.layers):
            if i in c.feature_layers:
                kept[i] = x
            x = layer(x, mask)
        kept[len(self.layers)] = x  # a feature layer equal to n_layers names the final output
        features = torch.stack([kept[i] for i in c.feature_layers], dim=-1)

        x = self.post_tile(self.norm_post(x).view(images, tiles, padded, c.dim), ids)
        x = x.view(images, tiles * padded, c.dim)
        for layer in self.global_layers:
            x = layer(x, mask)

        # The projector's input columns are [final output | features interleaved per channel]:
        # channel j of feature layer f is column dim + j * len(feature_layers) + f (Meta stacks
        # the features on a last axis and flattens it), so stack-then-flatten, not concatenate.
        x = x.view(images, tiles, padded, c.dim)[:, :, :P]
        features = features.view(images, tiles, padded, -1)[:, :, :P]
        x = self.projector(torch.cat([x, features], dim=-1))
        return x.reshape(B, N * tiles * P, -1)


def _encoder_mask(tile_mask: torch.Tensor, patches: int, padded: int) -> torch.Tensor:
    """Boolean [images, 1, L, L] for L = tiles * padded: query i may read key j unless both are
    padding (a padded position, or a tile the image does not use) - Meta's rule (module doc)."""
    real = torch.arange(padded, device=tile_mask.device) < patches
    real = (tile_mask.unsqueeze(-1) & real).flatten(1)  # [images, L]
    padding = ~real
    return ~(padding.unsqueeze(2) & padding.unsqueeze(1)).unsqueeze(1)
