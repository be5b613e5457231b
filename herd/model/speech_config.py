"""`SpeechConfig`: the shape of a Llama 3 speech encoder and adapter (Llama 3 paper section 8.2).

80-dimensional log-mel features every 10 ms (herd/data/audio.py) are stacked `stack` at a time
(40 ms frames) and projected to the encoder's width; a Conformer encoder (`n_layers` blocks of
two half-step Macaron feed-forwards, rotary self-attention, a depthwise convolution of
`conv_kernel`) reads them; the adapter (a convolution of `adapter_kernel` and `adapter_stride`,
80 ms frames, one rotary Transformer layer, a projection to the language model's width) turns
them into embeddings that enter the language model as tokens between <|speech_start|> and
<|speech_end|>. The defaults are the paper's: a 1B-parameter Conformer of 24 layers, width 1536,
feed-forwards of 4096, 24 heads, kernel 7; an adapter convolution of kernel 3, stride 2.

Each clip takes `extra_tokens` rows past the vocabulary (after an image model's): <|speech_start|>,
<|speech_end|>, and <|speech|>, which stands for one adapter frame in a prompt (the prompt holds as
many as the clip has frames, `frames_for`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError

HOP = 160  # samples per log-mel frame at 16 kHz (10 ms)


@dataclass(frozen=True)
class SpeechConfig:
    """A speech encoder and adapter: log-mel frames -> token embeddings (module doc)."""

    n_mels: int = field(default=80, metadata={"help": "log-mel features per 10 ms frame"})
    stack: int = field(default=4, metadata={"help": "mel frames stacked into one (10 -> 40 ms)"})
    dim: int = field(default=1536, metadata={"help": "Conformer width"})
    n_layers: int = field(default=24, metadata={"help": "Conformer blocks"})
    n_heads: int = field(default=24, metadata={"help": "attention heads (encoder and adapter)"})
    ffn_dim: int = field(default=4096, metadata={"help": "feed-forward hidden width"})
    conv_kernel: int = field(default=7, metadata={"help": "Conformer depthwise kernel (odd)"})
    adapter_kernel: int = field(default=3, metadata={"help": "adapter convolution kernel"})
    adapter_stride: int = field(default=2, metadata={"help": "adapter stride (40 -> 80 ms)"})
    max_frames: int = field(
        default=3000, metadata={"help": "longest clip in 40 ms frames (the rotary table)"}
    )
    rope_theta: float = field(default=10000.0, metadata={"help": "rotary base frequency"})
    norm_eps: float = field(default=1e-5, metadata={"help": "LayerNorm epsilon"})
    extra_tokens: int = field(
        default=3, metadata={"help": "rows past the vocabulary: start, end, frame placeholder"}
    )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def frames_for(self, samples: int) -> int:
        """Adapter frames (80 ms each with the defaults) of a clip of `samples` at 16 kHz: the
        mel frames (samples // 160), stacked (a partial stack dropped), then the strided
        convolution's output length (padding kernel // 2 on both sides)."""
        return self.adapter_frames(samples // HOP // self.stack)

    def adapter_frames(self, stacked):
        """The strided convolution's output length for `stacked` 40 ms frames (an int, or a
        tensor of lengths): what the encoder computes and a prompt is given tokens for."""
        k = self.adapter_kernel
        frames = (stacked + 2 * (k // 2) - k) // self.adapter_stride + 1
        return frames.clamp(min=0) if hasattr(frames, "clamp") else max(0, frames)

    def validate(self, source: str) -> None:
        where = f"{source}: speech"
        for name in (
            "n_mels",
            "stack",
            "dim",
            "n_layers",
            "n_heads",
            "ffn_dim",
            "conv_kernel",
            "adapter_kernel",
            "adapter_stride",
            "max_frames",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise HerdError(f"{where} field '{name}' is {value!r}, expected a positive integer")
        if self.dim % self.n_heads or self.head_dim % 2:
            raise HerdError(
                f"{where} dim {self.dim} must split into n_heads {self.n_heads} heads of an even "
                "width (rotary attention)"
            )
        if self.conv_kernel % 2 == 0:
            raise HerdError(f"{where} conv_kernel {self.conv_kernel} must be odd")
        if self.extra_tokens != 3:
            raise HerdError(f"{where} extra_tokens is {self.extra_tokens}, expected 3")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise HerdError(f"{where} 'rope_theta' and 'norm_eps' must be positive")

    def encoder_params(self, text_dim: int) -> int:
        """The stacking projection, the Conformer, the adapter and its projection to `text_dim`
        (herd/model/speech.py's modules, biases included)."""
        d, f = self.dim, self.ffn_dim
        norm = 2 * d
        feed_forward = norm + d * f + f + f * d + d
        attention = norm + 4 * (d * d + d)
        conv = norm + d * 2 * d + 2 * d + d * self.conv_kernel + d + norm + d * d + d
        block = 2 * feed_forward + attention + conv + norm
        stack = self.n_mels * self.stack * d + d
        adapter_conv = d * d * self.adapter_kernel + d
        adapter_layer = attention + feed_forward
        projection = norm + d * text_dim + text_dim
        return stack + self.n_layers * block + adapter_conv + adapter_layer + projection


def speech_from_dict(data: Any, source: str) -> SpeechConfig:
    """A `SpeechConfig` from config.json's "speech" object, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise HerdError(f"{source}: 'speech' must be an object or null")
    known = [f.name for f in dataclasses.fields(SpeechConfig)]
    bad = sorted(set(data) - set(known))
    if bad:
        raise HerdError(
            f"{source}: unknown key 'speech.{bad[0]}' (expected one of: {', '.join(known)})"
        )
    return SpeechConfig(**data)
