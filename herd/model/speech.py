"""The speech encoder and adapter of Llama 3 (paper section 8.2): log-mel frames -> embeddings.

    features [B, F, n_mels] (10 ms)
      -> stack `stack` frames, Linear           [B, F // stack, dim]       (40 ms)
      -> Conformer blocks (Gulati et al. 2020)
      -> adapter: Conv1d(kernel, stride)        [B, ~F // stack / 2, dim]  (80 ms)
                  one rotary Transformer layer
                  LayerNorm, Linear -> text width

A Conformer block (Macaron style: two feed-forwards of half a step around the attention and the
convolution):

    x = x + 1/2 FFN(x)                 FFN: LayerNorm, Linear, SiLU (Swish), Linear
    x = x + MHSA(LayerNorm(x))         rotary positions, as the paper's "rotary attention module"
    x = x + Conv(x)                    LayerNorm, pointwise Linear to 2 dim, GLU, depthwise Conv1d
                                       (conv_kernel, same padding), LayerNorm, SiLU, pointwise
    x = x + 1/2 FFN(x)
    x = LayerNorm(x)

The convolution module normalises with a LayerNorm over channels where the original has a
BatchNorm: batch statistics would mix the padding of clips of different lengths and depend on
the batch. Padded frames are zeroed before every convolution and masked as attention keys, so a
clip's output does not depend on what it is batched with (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import HerdError
from herd.model.rope import apply_rope, inverse_frequencies
from herd.model.speech_config import SpeechConfig


def rope_for(config: SpeechConfig, length: int, device) -> torch.Tensor:
    """cos and sin [length, 2, head_dim // 2] for positions 0..length-1."""
    inv = inverse_frequencies(config.head_dim, config.rope_theta, None)
    inv = inv if device is None else inv.to(device)
    angles = torch.outer(torch.arange(length, dtype=torch.float64, device=inv.device), inv)
    return torch.stack([angles.cos(), angles.sin()], dim=1).to(torch.float32)


class SpeechFeedForward(nn.Module):
    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.w1 = nn.Linear(config.dim, config.ffn_dim)
        self.w2 = nn.Linear(config.ffn_dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(self.norm(x))))


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions over one clip's frames; padded frames
    (`keep` False) are never attended to."""

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.wq = nn.Linear(config.dim, config.dim)
        self.wk = nn.Linear(config.dim, config.dim)
        self.wv = nn.Linear(config.dim, config.dim)
        self.wo = nn.Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        h = self.norm(x)
        q = apply_rope(self.wq(h).view(B, T, self.n_heads, self.head_dim), rope)
        k = apply_rope(self.wk(h).view(B, T, self.n_heads, self.head_dim), rope)
        v = self.wv(h).view(B, T, self.n_heads, self.head_dim)
        # [B, 1, 1, T]: every frame sees its clip's frames; an empty slot (no frame) sees all, as
        # attention over no keys is NaN, and NaN would reach the gradients through the padding
        mask = (keep | ~keep.any(dim=1, keepdim=True))[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class ConvModule(nn.Module):
    """Pointwise to 2 dim, GLU, depthwise convolution, LayerNorm, SiLU, pointwise."""

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        d = config.dim
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.pointwise_in = nn.Linear(d, 2 * d)
        self.depthwise = nn.Conv1d(d, d, config.conv_kernel, padding=config.conv_kernel // 2,
                                   groups=d)  # fmt: skip
        self.conv_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.pointwise_out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        h = h * keep.unsqueeze(-1).to(h.dtype)  # padding must not reach real frames
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        return self.pointwise_out(F.silu(self.conv_norm(h)))


class ConformerBlock(nn.Module):
    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.ffn_in = SpeechFeedForward(config)
        self.attn = RotarySelfAttention(config)
        self.conv = ConvModule(config)
        self.ffn_out = SpeechFeedForward(config)
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn_in(x)
        x = x + self.attn(x, rope, keep)
        x = x + self.conv(x, keep)
        x = x + 0.5 * self.ffn_out(x)
        return self.norm(x)


class AdapterLayer(nn.Module):
    """The adapter's rotary Transformer layer: pre-norm attention and feed-forward."""

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.attn = RotarySelfAttention(config)
        self.ffn = SpeechFeedForward(config)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, rope, keep)
        return x + self.ffn(x)


class SpeechEncoder(nn.Module):
    """features [B, F, n_mels] and their lengths [B] -> embeddings [B, F', text_dim] and the
    frames each clip has [B] (F' = `SpeechConfig.frames_for` of the longest clip)."""

    def __init__(self, config: SpeechConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.stack = nn.Linear(config.n_mels * config.stack, d)
        self.layers = nn.ModuleList(ConformerBlock(config) for _ in range(config.n_layers))
        k = config.adapter_kernel
        self.adapter_conv = nn.Conv1d(d, d, k, stride=config.adapter_stride, padding=k // 2)
        self.adapter = AdapterLayer(config)
        self.out_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.project = nn.Linear(d, text_dim)
        # cos and sin for max_frames positions, once: derived, never saved (a model built on the
        # meta device recomputes it when materialised, SpeechLanguageModel.init_buffers)
        self.register_buffer("rope", rope_for(config, config.max_frames, None), persistent=False)

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        B, frames, _ = features.shape
        steps = frames // c.stack  # a partial stack at the end is dropped
        if steps > c.max_frames:
            raise HerdError(
                f"a clip of {steps} 40 ms frames ({steps * c.stack / 100:.1f} s) is longer than "
                f"the speech encoder's max_frames {c.max_frames}"
            )
        x = features[:, : steps * c.stack].reshape(B, steps, c.stack * c.n_mels)
        lengths = lengths.to(features.device) // c.stack
        x = self.stack(x.to(self.stack.weight.dtype))
        keep = torch.arange(steps, device=x.device) < lengths.unsqueeze(1)
        rope = self.rope[:steps]
        for layer in self.layers:
            x = layer(x, rope, keep)
        # the strided convolution: 40 -> 80 ms frames (padding zeroed first)
        x = x * keep.unsqueeze(-1).to(x.dtype)
        x = self.adapter_conv(x.transpose(1, 2)).transpose(1, 2)
        lengths = c.adapter_frames(lengths)
        keep = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)
        x = self.adapter(x, self.rope[: x.shape[1]], keep)
        return self.project(self.out_norm(x)), lengths
