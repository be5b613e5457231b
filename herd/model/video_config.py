"""`VideoConfig`: the shape of a Llama 3 video adapter (paper sections 7.2 and 7.4).

A video model is a vision model (`ModelConfig.vision`) plus:
  - up to `max_frames` frames sampled evenly over a clip (64 in the paper), each read by the image
    encoder as a one-tile picture;
  - a temporal aggregator (a perceiver resampler, herd/model/video.py) that merges every `merge`
    consecutive frames (32 in the paper; 16 in its pre-training) into `latents` tokens with
    `layers` resampler layers of `n_heads` heads, in the language model's width;
  - video cross-attention layers, one before every `every`-th image cross-attention layer (4 in
    the paper), reading the aggregated tokens;
  - `extra_tokens` = 1 row past the image rows of the vocabulary: <|video|>, which shows where
    the clip stands in a prompt (tokens from it on see the clip).
Only the aggregator, the video cross-attention layers and <|video|>'s row are trained on top of a
trained vision model (Llama 3 section 7.4).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError


@dataclass(frozen=True)
class VideoConfig:
    """A temporal aggregator and video cross-attention layers on a vision model (module doc)."""

    max_frames: int = field(default=64, metadata={"help": "frames sampled evenly per clip"})
    merge: int = field(default=32, metadata={"help": "consecutive frames merged into one group"})
    latents: int = field(default=64, metadata={"help": "tokens per merged group"})
    layers: int = field(default=2, metadata={"help": "perceiver-resampler layers"})
    n_heads: int = field(default=16, metadata={"help": "resampler attention heads"})
    every: int = field(
        default=4, metadata={"help": "a video layer before every this many image cross layers"}
    )
    extra_tokens: int = field(default=1, metadata={"help": "rows past the image rows: <|video|>"})

    @property
    def groups(self) -> int:
        """Merged groups of a clip of `max_frames` frames."""
        return -(-self.max_frames // self.merge)

    def video_layers(self, image_layers: int) -> int:
        """Video cross-attention layers for `image_layers` image cross-attention layers."""
        return -(-image_layers // self.every)

    def validate(self, source: str, text_dim: int) -> None:
        where = f"{source}: video"
        for name in ("max_frames", "merge", "latents", "layers", "n_heads", "every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise HerdError(f"{where} field '{name}' is {value!r}, expected a positive integer")
        if text_dim % self.n_heads:
            raise HerdError(
                f"{where} n_heads {self.n_heads} must divide the model's dim {text_dim} (the "
                "aggregator works in the language model's width)"
            )
        if self.extra_tokens != 1:
            raise HerdError(f"{where} extra_tokens is {self.extra_tokens}, expected 1")

    def aggregator_params(self, d: int) -> int:
        """The resampler's parameters at width `d` (herd/model/video.py, biases included)."""
        norm = 2 * d
        layer = 3 * norm + 4 * d * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
        return self.latents * d + self.merge * d + self.layers * layer + norm


def video_from_dict(data: Any, source: str) -> VideoConfig:
    """A `VideoConfig` from config.json's "video" object, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise HerdError(f"{source}: 'video' must be an object or null")
    known = [f.name for f in dataclasses.fields(VideoConfig)]
    bad = sorted(set(data) - set(known))
    if bad:
        raise HerdError(
            f"{source}: unknown key 'video.{bad[0]}' (expected one of: {', '.join(known)})"
        )
    return VideoConfig(**data)
