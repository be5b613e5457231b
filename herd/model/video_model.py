"""A language model that watches: Llama 3's video adapter on a Llama 3.2 Vision-style model.

`VideoLanguageModel` is a `VisionLanguageModel` (pictures work as before) that also holds
  - `video_aggregator`: the temporal aggregator (herd/model/video.py), which merges every
    `merge` consecutive frames' image tokens into `latents` tokens;
  - `video_cross_layers`: gated cross-attention layers (the image ones' kind), video layer j
    running just before image cross-attention layer j * `every` (Llama 3 section 7.2: "before
    every fourth image cross-attention layer");
  - `video_embed`: the row of <|video|> (`ModelConfig.video_token_id`).

A clip is `Videos`: its frames, each one tile of the image encoder's size
(`herd.model.image_processing.video_frames`),
encoded by the (frozen) image encoder as one-tile pictures, then aggregated. At most one clip per
row: tokens from the row's <|video|> token on see it, as a single picture is seen from its
<|image|> token on. Rows without a clip (count 0) and tokens before <|video|> get exactly no
video cross-attention output (both gates multiply zero), so text and pictures run as the vision
model does. A target equal to <|video|> is not counted in the loss.

For generation a `VideoKVCache` keeps, beside the vision model's cache, every video layer's keys
and values of the clip (computed once, at the prefill) and which positions see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from herd.errors import HerdError
from herd.model.cache import KVCache
from herd.model.config import ModelConfig
from herd.model.cross_attention import (
    CrossAttentionBlock,
    cross_attention_mask,
    image_visibility,
)
from herd.model.masks import PackedAttention
from herd.model.multimodal import ImageKVCache, Images, VisionLanguageModel, prepare_images
from herd.model.video import TemporalAggregator

ADDED_PARTS = ("video_aggregator", "video_cross_layers", "video_embed")


@dataclass
class Videos:
    """A batch's clips: frames [B, F, C, S, S] (one tile each, normalised as the image processor
    normalises tiles; a row's frames after its count are padding) and counts [B] (real frames;
    0 for a row without a clip)."""

    frames: torch.Tensor
    counts: torch.Tensor

    def to(self, device) -> Videos:
        return Videos(self.frames.to(device), self.counts.to(device))


def prepare_videos(videos: Videos, tokens: torch.Tensor, config: ModelConfig) -> Videos:
    """`videos` checked against `tokens` [B, T] and the model; a `HerdError` naming what is
    wrong otherwise."""
    v, S = config.vision, config.vision.image_size
    frames, counts = videos.frames, videos.counts.long()
    B = tokens.shape[0]
    if frames.dim() != 5 or frames.shape[0] != B or tuple(frames.shape[2:]) != (v.channels, S, S):
        raise HerdError(
            f"videos: frames have shape {list(frames.shape)}, expected [{B}, frames, "
            f"{v.channels}, {S}, {S}]"
        )
    n_frames = frames.shape[1]
    if n_frames > config.video.max_frames:
        raise HerdError(
            f"videos: {n_frames} frames, more than the model takes ({config.video.max_frames}, "
            "video.max_frames)"
        )
    if tuple(counts.shape) != (B,) or int(counts.min()) < 0 or int(counts.max()) > n_frames:
        raise HerdError(f"videos: counts must be [{B}] numbers of real frames in 0..{n_frames}")
    marks = (tokens == config.video_token_id).sum(dim=1).tolist()
    for row, (n, c) in enumerate(zip(marks, counts.tolist(), strict=True)):
        if n > 1:
            raise HerdError(f"row {row}: {n} <|video|> tokens; a row shows one clip at most")
        if n != (c > 0):
            what = "a <|video|> token without a clip" if n else "a clip without a <|video|> token"
            raise HerdError(f"row {row}: {what}")
    return Videos(frames, counts)


class VideoKVCache(ImageKVCache):
    """The vision model's cache (`ImageKVCache`) plus every video layer's keys and values of the
    clip and which positions see it (set by the prefill that brings the clip; positions after the
    prompt see what its last token saw)."""

    def __init__(self, config, batch_size, max_len, device, dtype) -> None:
        super().__init__(config, batch_size, max_len, device, dtype)
        self.video_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.video_visible: torch.Tensor | None = None  # [B, max_len, 1]
        self.video_groups: torch.Tensor | None = None  # [B, 1, groups]

    @property
    def has_video(self) -> bool:
        return self.video_visible is not None

    def set_video(self, kv, visible: torch.Tensor, groups: torch.Tensor) -> None:
        B, T, N = visible.shape
        later = visible[:, -1:].expand(B, self.max_len - T, N)
        self.video_kv = [(k.detach(), v.detach()) for k, v in kv]
        self.video_visible = torch.cat([visible, later], dim=1)
        self.video_groups = groups


class VideoLanguageModel(VisionLanguageModel):
    """tokens [B, T] (+ images, + videos) -> logits; a `VisionLanguageModel` without videos."""

    def __init__(self, config: ModelConfig) -> None:
        if config.video is None:
            raise HerdError("a video model needs config.video (a temporal aggregator's shape)")
        super().__init__(config)
        c = config.video
        self.video_embed = nn.Embedding(c.extra_tokens, config.dim)
        self.video_aggregator = TemporalAggregator(
            config.dim, c.merge, c.latents, c.layers, c.n_heads, config.norm_eps
        )
        image_layers = len(config.vision.cross_attention_layers)
        self.video_cross_layers = nn.ModuleList(
            CrossAttentionBlock(config) for _ in range(c.video_layers(image_layers))
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
        images: Images | None = None,
        cross_mask: torch.Tensor | None = None,
        videos: Videos | None = None,
    ) -> torch.Tensor:
        """`VisionLanguageModel.forward`, with `videos` for rows whose prompt holds <|video|>.
        With a `VideoKVCache`, the clip comes with the prefill (from position 0) and decode
        steps reuse it."""
        cached = isinstance(cache, VideoKVCache) and cache.has_video
        T = tokens.shape[1]
        if videos is None and not cached:
            if cache is None or T > 1:
                count = int((tokens == self.config.video_token_id).sum())
                if count:
                    raise HerdError(f"{count} <|video|> tokens but no video was given")
            return super().forward(
                tokens, input_pos, cache, packed, targets, reduction, last, hidden, images,
                cross_mask,
            )  # fmt: skip
        if packed is not None:
            raise HerdError("packed sequences with videos are not supported yet")
        rope, mask = self._rope_and_mask(T, input_pos, cache)
        if cache is not None and videos is not None and (input_pos is None or int(input_pos[0])):
            raise HerdError("videos come with the prefill, from position 0")

        image_state = self._image_state(tokens, images, cross_mask, cache, input_pos)
        if videos is not None:
            videos = prepare_videos(videos, tokens, self.config)
            video_kv, groups = self.video_keys_values(videos)
            visible = image_visibility(tokens, self.config.video_token_id, 1)
            if cache is not None:
                cache.set_video(video_kv, visible, groups)
        else:
            video_kv, groups = cache.video_kv, cache.video_groups
            visible = cache.video_visible[:, input_pos]
        video_state = (video_kv, cross_attention_mask(visible, groups, self.config.video.latents))
        return self.decode(
            tokens, image_state, rope, input_pos, cache, mask, targets, reduction, last, hidden,
            video_state=video_state,
        )  # fmt: skip

    def _cross(self, k: int, x: torch.Tensor, image_state, video_state) -> torch.Tensor:
        """Video cross-attention layer k // every when k is a multiple of `every` (and some
        token sees a clip: `video_state` as `decode` takes it), then image layer k."""
        every = self.config.video.every
        if video_state is not None and k % every == 0:
            kv, masks = video_state
            x = self.video_cross_layers[k // every](x, kv[k // every], *masks)
        return super()._cross(k, x, image_state, video_state)

    def video_keys_values(self, videos: Videos):
        """Every video layer's keys and values of the aggregated clip, and which merged groups
        hold a real frame ([B, 1, groups]): frames through the image encoder as one-tile
        pictures, then the temporal aggregator."""
        frames, counts = videos.frames, videos.counts.long()
        B, n_frames = frames.shape[:2]
        layout = self.config.vision.aspect_ratios.index((1, 1)) + 1
        pictures = Images(
            frames.reshape(B * n_frames, 1, 1, *frames.shape[2:]),
            torch.full((B * n_frames, 1), layout, device=frames.device),
        )
        pictures = prepare_images(
            pictures, _one_image_each(B * n_frames, self.config, frames), self.config
        )
        tokens = self.vision(pictures.pixels, pictures.aspect_ratio_ids, pictures.aspect_ratio_mask)
        P = self._patches
        tokens = tokens.view(B, n_frames, -1, tokens.shape[-1])[:, :, :P]  # the frame's one tile
        merged = self.video_aggregator(tokens, counts)  # [B, groups, latents, dim]
        groups = merged.shape[1]
        real = torch.arange(groups, device=frames.device) * self.config.video.merge
        present = (real < counts.unsqueeze(1)).unsqueeze(1)  # [B, 1, groups]
        flat = merged.flatten(1, 2)
        return [layer.attn.keys_values(flat) for layer in self.video_cross_layers], present

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vocabulary rows, the image rows past it, and <|video|>'s row, without a host sync."""
        x = super()._embed(tokens)
        is_video = (tokens == self.config.video_token_id).unsqueeze(-1)
        return torch.where(is_video, self.video_embed.weight[0].to(x.dtype), x)


def _one_image_each(n: int, config: ModelConfig, like: torch.Tensor) -> torch.Tensor:
    """A prompt of one <|image|> per row, which `prepare_images` checks frames against."""
    return torch.full((n, 1), config.image_token_id, device=like.device)
