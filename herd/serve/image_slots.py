"""Pictures in the continuous batch: each KV slot's image keys and values, and the forward pass
that reads them for a range of slots.

A Llama 3.2 Vision request's pictures are encoded once, at its first prefill chunk, and every
cross-attention layer's image keys and values are written into its slot's row here, as
`ImageKVCache` keeps them for `herd.generate`. Buffers are [slots, n_kv_heads, max_images *
max_tiles * patches, head_dim] per cross-attention layer, allocated with the engine (a vision
model only), so a decode step over the slot range [lo, hi) reads rows lo..hi in place, as the
text KV cache is read; rows move with the engine's row swaps.

Each row's visibility (which of its images a position sees, herd.model.cross_attention's
`image_visibility`) comes from its prompt; generated tokens see what the prompt's last token
saw. Rows without pictures (text requests, idle rows) see none, so their cross-attention
layers add exactly zero: a text request decoded beside a picture request gets the very numbers
the text path gives it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from herd.model.cross_attention import cross_attention_mask
from herd.model.multimodal import Images


@dataclass
class Pictures:
    """A request's pictures for the engine: the processor's `Images` (one batch row) and each
    image's fingerprint, a hash of the pixels and tile layout the model reads, by which the
    prefix cache tells images apart (hashed once per request, off the engine thread)."""

    images: Images
    fingerprints: list[tuple[str, str, int]]

    @classmethod
    def of(cls, images: Images) -> Pictures:
        pixels, ids = images.pixels[0].cpu(), images.aspect_ratio_ids[0].tolist()
        prints = [
            ("<|image|>", hashlib.sha256(pixels[i].numpy().tobytes()).hexdigest(), int(a))
            for i, a in enumerate(ids)
        ]
        return cls(images, prints)


class ImageSlots:
    def __init__(self, model, slots: int, max_images: int, device, dtype) -> None:
        config, v = model.config, model.config.vision
        self.per_image = v.max_tiles * v.patches  # image tokens an image slot holds
        self.patches = v.patches
        self.max_images, self.max_tiles = max_images, v.max_tiles
        shape = (slots, config.n_kv_heads, max_images * self.per_image, config.head_dim)
        n = len(model.cross_layers)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
        self.tile_mask = torch.zeros(
            slots, max_images, v.max_tiles, dtype=torch.bool, device=device
        )
        self.count = [0] * slots  # images held by each row

    def write(self, model, row: int, images: Images) -> None:
        """Encode one request's `images` (prepared, one batch row) into `row`."""
        n = images.pixels.shape[1]
        length = n * self.per_image
        for buf_k, buf_v, (k, v) in zip(
            self.keys, self.values, model.image_keys_values(images), strict=True
        ):
            buf_k[row, :, :length] = k[0]
            buf_v[row, :, :length] = v[0]
        self.tile_mask[row] = False
        self.tile_mask[row, :n] = images.aspect_ratio_mask[0]
        self.count[row] = n

    def swap(self, a: int, b: int) -> None:
        length = max(self.count[a], self.count[b]) * self.per_image
        for buf in (*self.keys, *self.values):
            held = buf[a, :, :length].clone()
            buf[a, :, :length] = buf[b, :, :length]
            buf[b, :, :length] = held
        self.tile_mask[[a, b]] = self.tile_mask[[b, a]]
        self.count[a], self.count[b] = self.count[b], self.count[a]

    def state(self, lo: int, hi: int, visible: torch.Tensor):
        """(keys and values, cross-attention masks) of rows [lo, hi) for the image layers:
        `visible` [B, T, N] says which of each row's first N images each token sees (N: the
        most any of these rows holds)."""
        n = visible.shape[-1]
        length = n * self.per_image
        kv = [
            (k[lo:hi, :, :length], v[lo:hi, :, :length])
            for k, v in zip(self.keys, self.values, strict=True)
        ]
        return kv, cross_attention_mask(visible, self.tile_mask[lo:hi, :n], self.patches)

    def forward(
        self,
        model,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        rows,
        visible: torch.Tensor,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`model(tokens, positions, rows)` (text KV in `rows`, SlotRows over [lo, hi)) with the
        images of those rows (`state`'s `visible`). What VisionLanguageModel.forward does with
        an ImageKVCache, for rows at their own positions and with images of their own."""
        state = self.state(rows.start, rows.stop, visible)
        rope, mask = model.rope[positions], rows.mask(positions)
        return model.decode(tokens, state, rope, positions, rows, mask, last=last)
