"""Clips in the continuous batch (a video model's requests): each KV slot's video keys and
values, as image_slots.py keeps pictures.

A request shows one clip at most. Its frames are encoded once, at its first prefill chunk (the
image encoder over every frame, the temporal aggregator, then every video cross-attention
layer's keys and values), into its slot's row of buffers [slots, n_kv_heads, groups * latents,
head_dim], with which merged groups hold real frames. Positions from the prompt's <|video|> on
see the clip, and generated tokens see what the prompt's last token saw, as `VideoKVCache`
keeps it for `herd.generate`; rows without a clip see nothing, so their video layers add exact
zeros.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from herd.model.cross_attention import cross_attention_mask
from herd.model.video_model import Videos


@dataclass
class VideoClip:
    """A request's clip for the engine: `Videos` of one row and its fingerprint (a hash of the
    frames the model reads), by which the prefix cache tells clips apart."""

    videos: Videos
    fingerprint: tuple[str, str]

    @classmethod
    def of(cls, videos: Videos) -> VideoClip:
        frames = videos.frames[0, : int(videos.counts[0])].cpu().contiguous()
        return cls(videos, ("<|video|>", hashlib.sha256(frames.numpy().tobytes()).hexdigest()))


class VideoSlots:
    """Every video cross-attention layer's keys and values of each slot's clip, and which of its
    merged frame groups are real, allocated with the engine (a video model only)."""

    def __init__(self, model, slots: int, device, dtype) -> None:
        config, c = model.config, model.config.video
        self.latents = c.latents
        shape = (slots, config.n_kv_heads, c.groups * c.latents, config.head_dim)
        n = len(model.video_cross_layers)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
        self.present = torch.zeros(slots, 1, c.groups, dtype=torch.bool, device=device)

    def write(self, model, row: int, videos: Videos) -> None:
        """Encode one request's clip (one batch row) into `row`."""
        kv, present = model.video_keys_values(videos)
        length = present.shape[-1] * self.latents
        for buf_k, buf_v, (k, v) in zip(self.keys, self.values, kv, strict=True):
            buf_k[row, :, :length] = k[0]
            buf_v[row, :, :length] = v[0]
        self.present[row] = False
        self.present[row, :, : present.shape[-1]] = present[0]

    def swap(self, a: int, b: int) -> None:
        for buf in (*self.keys, *self.values, self.present):
            buf[[a, b]] = buf[[b, a]]  # the right side is a copy

    def state(self, lo: int, hi: int, visible: torch.Tensor):
        """(keys and values, cross-attention masks) of rows [lo, hi) for the video layers;
        `visible` [B, T, 1] says which tokens see their row's clip."""
        kv = [(k[lo:hi], v[lo:hi]) for k, v in zip(self.keys, self.values, strict=True)]
        return kv, cross_attention_mask(visible, self.present[lo:hi], self.latents)
