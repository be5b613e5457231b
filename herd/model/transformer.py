"""The Llama-family decoder: RMSNorm, grouped-query attention with RoPE, SwiGLU, tied embeddings.

Written for a single device, as in torchtitan: parallelism, activation checkpointing and compilation
are applied from outside. Build on the meta device and materialise with `build_model`, so a 405B
config costs nothing until it is placed, and loading a checkpoint never allocates weights twice.

Architecture (LLaMA, Touvron et al. 2023, section 2.2): pre-normalisation with RMSNorm (Zhang &
Sennrich 2019), SwiGLU feed-forward (Shazeer 2020), rotary embeddings (Su et al. 2021); grouped-query
attention from Llama 2 (Ainslie et al. 2023).

Initialisation (documented because the papers do not state one): every linear and embedding weight
~ N(0, 0.02); the two projections that write into the residual stream (attention `wo`, feed-forward
`w2`) use std 0.02 / sqrt(2 * n_layers) so the residual variance stays flat with depth (GPT-2,
Radford et al. 2019); RMSNorm gains start at 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import HerdError
from herd.model.cache import KVCache
from herd.model.config import ModelConfig
from herd.model.linear import Linear
from herd.model.loss import linear_cross_entropy
from herd.model.masks import PackedAttention, flex_attention
from herd.model.rope import apply_rope, rope_table

INIT_STD = 0.02

_eager_loss = torch.compiler.disable(linear_cross_entropy)


class RMSNorm(nn.Module):
    """x / rms(x) * g, computed in at least float32 for stability, cast back to the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = F.rms_norm(wide, (x.shape[-1],), eps=self.eps).type_as(x)
        return normed * self.weight


class Attention(nn.Module):
    """Multi-head self-attention with grouped key/value heads and rotary positions."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = Linear(config.dim, config.n_heads * config.head_dim)
        self.wk = Linear(config.dim, config.n_kv_heads * config.head_dim)
        self.wv = Linear(config.dim, config.n_kv_heads * config.head_dim)
        self.wo = Linear(config.n_heads * config.head_dim, config.dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        input_pos: torch.Tensor | None,
        cache: KVCache | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, input_pos, k, v)
        gqa = self.n_kv_heads != self.n_heads
        if mask is not None and not isinstance(mask, torch.Tensor):  # a FlexAttention BlockMask
            out = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
        elif T == 1 and mask is not None:
            out = _single_query_attention(q, k, v, mask)
        elif mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


def _single_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Decode-step attention, q [B, H, 1, D] over k, v [B, KV, L, D] with mask [1, L].

    Plain matmuls: each KV head serves its group of query heads without repeating k/v, and under
    torch.compile the scale, mask and softmax fuse into the matmuls' neighbours. SDPA's CPU kernel
    costs ~100us per call here, more than the arithmetic of a single query.
    """
    B, H, _, D = q.shape
    kv_heads = k.shape[1]
    q = q.view(B, kv_heads, H // kv_heads, D)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).type_as(q)
    return torch.matmul(probs, v).view(B, H, 1, D)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = Linear(dim, hidden)
        self.w2 = Linear(hidden, dim)
        self.w3 = Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn = FeedForward(config.dim, config.ffn_dim)

    def forward(self, x, rope, input_pos, cache, mask):
        x = x + self.attn(self.attn_norm(x), rope, input_pos, cache, mask)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab_size]."""

    def __init__(self, config: ModelConfig) -> None:
        if type(self) is Transformer and (config.vision or config.speech):  # never text-only
            kind = "VisionLanguageModel" if config.vision else "speech_model.SpeechLanguageModel"
            raise HerdError(
                f"a config with {'vision' if config.vision else 'speech'} builds "
                f"herd.model.{'multimodal.' if config.vision else ''}{kind} "
                "(herd.build_model builds it)"
            )
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        # A reward model's output is one scalar per position (config.head "score").
        self.output = Linear(config.dim, config.output_size)
        if config.tie_embeddings:
            self.output.weight = self.embed.weight
        # Not persistent: derived from the config, recomputed on materialisation.
        self.register_buffer(
            "rope", torch.empty(config.max_seq_len, 2, config.head_dim // 2), persistent=False
        )

    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        packed: PackedAttention | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "sum",
        last: torch.Tensor | None = None,
        hidden: bool = False,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for `tokens`, or with `targets` the cross-entropy against them.

        With a cache, `input_pos` [T] gives the absolute positions. With `packed` (training on
        packed documents) attention stays within documents, optionally bidirectional over each
        document's marked region, and positions restart at every document.

        With `targets` [B, T] (-100 = not counted) the logits are never materialised: the loss is
        fused with the output projection in row chunks (herd/model/loss.py) and returned as the
        float32 sum (`reduction="sum"`, for training) or per position (`"none"`, for evaluation).
        Computed inside `forward` so FSDP2's hooks gather the output weight as usual.

        With `hidden=True` the final-normed hidden states [B, T, dim] (or [B, dim] with `last`)
        instead of logits: what a scalar head reads (a PPO value model). Through `forward`, not a
        separate method, so FSDP2's root hooks gather the embedding and final norm as usual.

        With `last` [B] (a position per row) only those positions' logits are computed, [B, vocab]:
        scoring and prefill need one position, and the output projection is the widest layer.
        A reward model (config.head "score") returns [B, T, 1], or [B, 1] with `last`.

        `embeds` [B, T, dim]: the input embeddings to use in place of the tokens' rows (a model
        that puts other inputs among the tokens, herd/model/speech_model.py).
        """
        T = tokens.shape[1]
        if packed is not None:
            rope = self.rope[packed.positions()]
            # The caller's block mask (the trainer builds one per batch); on CUDA one is built
            # here if the caller gave none; elsewhere a dense boolean mask (no FlexAttention
            # backward on CPU).
            packed = packed.for_attention()
            mask = packed.flex if packed.flex is not None else packed.dense()
        elif cache is None:
            rope = self.rope[:T] if input_pos is None else self.rope[input_pos]
            mask = None
        else:
            rope = self.rope[input_pos]
            mask = cache.mask(input_pos)
        x = self.embed(tokens) if embeds is None else embeds
        for block in self.layers:
            x = block(x, rope, input_pos, cache, mask)
        if targets is not None:
            # On CPU the eager fused loss (in-place softmax in a kept buffer) beats what Inductor
            # makes of it, so a compiled model leaves it out of the graph there.
            loss = _eager_loss if x.device.type == "cpu" else linear_cross_entropy
            return loss(self.norm(x), self.output.weight, targets, reduction)
        if last is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last]
        if hidden:
            return self.norm(x)
        return self.output(self.norm(x))

    def init_buffers(self) -> None:
        """(Re)compute the RoPE table on the model's device."""
        device = self.embed.weight.device
        self.rope = rope_table(self.config, device=device)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """The documented initialisation (module docstring); deterministic given `seed`."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.embed.weight.device).manual_seed(seed)
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("attn.wo.weight", "ffn.w2.weight")):
                p.normal_(0.0, residual_std, generator=gen)
            else:
                p.normal_(0.0, INIT_STD, generator=gen)
        self.init_buffers()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.output.weight = self.embed.weight


def embed_with_extra(
    embed: nn.Embedding, extra: nn.Embedding, tokens: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Input rows of `tokens` where ids past the vocabulary (<|image|>, the speech tokens) read
    `extra`'s rows, without a host sync: a multimodal model's embedding."""
    text = embed(tokens.clamp(max=vocab_size - 1))
    past = extra((tokens - vocab_size).clamp(min=0, max=extra.num_embeddings - 1))
    return torch.where((tokens >= vocab_size).unsqueeze(-1), past, text)
