"""Rotary position embeddings (Su et al. 2021) with Llama 3.1 frequency scaling.

herd stores q/k projections in the "half-split" layout (the first half of each head's dimensions
pairs with the second half, as Hugging Face does), so applying RoPE is two multiplies and a
concatenation. Meta's original and llama2.c checkpoints use the interleaved layout (pairs of adjacent
dimensions); `checkpoint.convert` permutes their q/k rows on import (`interleaved_to_half`).
"""

from __future__ import annotations

import math

import torch

from herd.model.config import ModelConfig, RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """theta^(-2i/d) for i < d/2, in float64, optionally rescaled as in Llama 3.1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is not None:
        inv_freq = _llama31_scale(inv_freq, scaling)
    return inv_freq


def _llama31_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    # Llama 3 paper section 3.4 / Meta's apply_scaling: keep high frequencies, divide low frequencies
    # by `factor`, and interpolate linearly in 1/wavelength-space between the two cutoffs.
    low_freq_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_seq_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    interpolated = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, interpolated)
    return torch.where(wavelen < high_freq_wavelen, inv_freq, out)


def rope_table(config: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """cos and sin for every position: float32 tensor [max_seq_len, 2, head_dim // 2]."""
    inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    positions = torch.arange(config.max_seq_len, dtype=torch.float64)
    angles = torch.outer(positions, inv_freq)
    table = torch.stack([angles.cos(), angles.sin()], dim=1).to(torch.float32)
    return table.to(device) if device is not None else table


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by the rows of `table` [T, 2, D/2] (or [B, T, 2, D/2]).

    Computed in float32 (as Meta's reference does) and cast back, so bf16 runs keep phase accuracy.
    Eager runs with autograd use `_Rotate`; without it `_rotate` is called directly, since the
    Function's per-call bookkeeping costs more than a decode step's rotation. Under torch.compile
    the plain formula is traced instead (Dynamo does not trace `out=` into strided views, and
    Inductor fuses the formula into one kernel anyway).
    """
    cos = table[..., 0, :].unsqueeze(-2)
    sin = table[..., 1, :].unsqueeze(-2)
    if torch.compiler.is_compiling():
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)
    if not torch.is_grad_enabled():  # inference: skip autograd.Function's per-call bookkeeping
        return _rotate(x.float(), cos, sin).type_as(x)
    return _Rotate.apply(x.float(), cos, sin).type_as(x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(x1 cos - x2 sin, x2 cos + x1 sin) over the two halves of the last dimension, written into
    one output: four fused element-wise passes, no temporaries and no concatenation."""
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
    return out


class _Rotate(torch.autograd.Function):
    """RoPE with a hand-written backward: a rotation's gradient is the inverse rotation (sin
    negated), one `_rotate` instead of autograd's chain of multiplies, slices and concatenations
    (a fifth of the element-wise time of a small model's training step on CPU). The table is a
    buffer and gets no gradient. The backward is this Function again, so it is differentiable
    to any order (create_graph, double backward); setup_context style, so torch.func runs
    through it."""

    @staticmethod
    def forward(x, cos, sin):
        return _rotate(x, cos, sin)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, cos, sin = inputs
        ctx.save_for_backward(cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _Rotate.apply(grad, cos, -sin), None, None


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute q/k projection rows from Meta's interleaved RoPE layout to herd's half-split layout."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // n_heads
    return w.view(n_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_half`."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // n_heads
    return w.view(n_heads, 2, head_dim // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
