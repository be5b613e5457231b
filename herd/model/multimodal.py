"""Llama 3.2 Vision: herd's text model with an image encoder and gated cross-attention layers.

`VisionLanguageModel` is a `Transformer` (the text model: its embedding, blocks, norm and output
keep their names, so the text weights of a vision checkpoint read as a Llama checkpoint's) that
also holds:
  - `vision`: the image encoder and projector (herd/model/vision.py), pixels -> image tokens;
  - `cross_layers`: gated cross-attention layers (herd/model/cross_attention.py), run before the
    text blocks their places in `config.vision.cross_attention_layers` name;
  - `extra_embed`: embedding rows for ids past the vocabulary, the first being <|image|>. They are
    not in the output layer (the model never predicts them), and a target equal to one is not
    counted in the loss. Meta trains them with the adapter while the text embeddings stay frozen.

Text-only input runs the text model alone (the cross-attention layers would add exact zeros:
no token sees an image), so a vision checkpoint serves text exactly as its text model does.

With images, `forward` takes them as `Images` (pixels [B, N, tiles, 3, S, S], aspect-ratio ids
and the tiles each image uses) plus, optionally, which images each token sees (`cross_mask`
[B, T, N]; derived from the <|image|> tokens when not given). For generation an `ImageKVCache`
keeps the text KV cache as herd's and, from the prefill that brings the images, every
cross-attention layer's image keys and values (computed once) and what each position sees;
decode steps then pass no images.

Build one with `herd.model.families.build_model` (`herd.build_model` and `Transformer` refuse a config
with vision rather than silently drop it); `herd.load` reads vision checkpoints as any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from herd.errors import HerdError
from herd.model.cache import KVCache
from herd.model.config import ModelConfig
from herd.model.cross_attention import CrossAttentionBlock, cross_attention_mask, image_visibility
from herd.model.loss import linear_cross_entropy
from herd.model.masks import PackedAttention
from herd.model.transformer import Transformer, embed_with_extra
from herd.model.vision import VisionEncoder


@dataclass
class Images:
    """A batch's images, as the vision model reads them.

    pixels: FloatTensor [B, N, tiles, channels, S, S]: N image slots per row, each cut into tiles
        of S = `image_size` pixels, normalised as the image processor does; at most `max_tiles`
        tiles (fewer are padded with empty ones).
    aspect_ratio_ids: LongTensor [B, N]: each image's tile layout, id i + 1 for
        `aspect_ratios[i]`; 0 for an empty slot (a row with fewer images than N). The n-th
        <|image|> token of a row shows its image n.
    aspect_ratio_mask: [B, N, tiles] (bool or 0/1), the tiles each image uses, or None to derive
        it from the ids (the layout's rows x columns tiles, and an empty slot's first tile, as
        transformers' image processor marks them).
    """

    pixels: torch.Tensor
    aspect_ratio_ids: torch.Tensor
    aspect_ratio_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Images:
        mask = self.aspect_ratio_mask
        return Images(
            self.pixels.to(device),
            self.aspect_ratio_ids.to(device),
            None if mask is None else mask.to(device),
        )


def prepare_images(images: Images, tokens: torch.Tensor, config: ModelConfig) -> Images:
    """`images` checked against the prompt `tokens` [B, T] and the model, with tiles padded to
    `max_tiles` and the tile mask boolean; a `HerdError` naming what is wrong otherwise."""
    v = config.vision
    pixels, ids = images.pixels, images.aspect_ratio_ids.long()
    S, B = v.image_size, tokens.shape[0]
    if pixels.dim() != 6 or pixels.shape[0] != B or tuple(pixels.shape[3:]) != (v.channels, S, S):
        raise HerdError(
            f"images: pixels have shape {list(pixels.shape)}, expected [{B}, images, tiles, "
            f"{v.channels}, {S}, {S}]"
        )
    N, tiles = pixels.shape[1], pixels.shape[2]
    if tiles > v.max_tiles:
        raise HerdError(
            f"images: {tiles} tiles per image, more than the model takes (at most {v.max_tiles} "
            f"tiles of {S}x{S} pixels)"
        )
    if tuple(ids.shape) != (B, N):
        raise HerdError(
            f"images: aspect_ratio_ids have shape {list(ids.shape)}, expected [{B}, {N}]"
        )
    layouts = torch.tensor([1] + [r * c for r, c in v.aspect_ratios], device=ids.device)
    if int(ids.min()) < 0 or int(ids.max()) >= len(layouts):
        raise HerdError(f"images: aspect_ratio_ids must lie in 0..{len(v.aspect_ratios)}")
    if int(layouts[ids].max()) > tiles:
        raise HerdError(
            f"images: a layout of {int(layouts[ids].max())} tiles, but {tiles} tiles given"
        )
    present = ids > 0
    if bool((present[:, 1:] & ~present[:, :-1]).any()):
        raise HerdError("images: an empty image slot (aspect-ratio id 0) before a real image")
    _check_image_tokens(tokens, present.sum(dim=1), config)

    mask = images.aspect_ratio_mask
    if mask is None:
        mask = torch.arange(tiles, device=ids.device) < layouts[ids].unsqueeze(-1)
    elif tuple(mask.shape) != (B, N, tiles):
        raise HerdError(
            f"images: aspect_ratio_mask has shape {list(mask.shape)}, expected [{B}, {N}, {tiles}]"
        )
    pad = v.max_tiles - tiles
    if pad:  # the tile embeddings are laid out for max_tiles tiles, as the processor pads them
        pixels = torch.cat([pixels, pixels.new_zeros(B, N, pad, *pixels.shape[3:])], dim=2)
        mask = torch.cat([mask.bool(), mask.new_zeros(B, N, pad).bool()], dim=2)
    return Images(pixels, ids, mask.bool())


def _check_image_tokens(
    tokens: torch.Tensor, images_per_row: torch.Tensor, config: ModelConfig
) -> None:
    """Every <|image|> token has an image and every image a token, row by row."""
    limit = config.vocab_size + config.vision.extra_tokens
    if config.video is not None:
        limit += config.video.extra_tokens  # <|video|>
    if int(tokens.max()) >= limit or int(tokens.min()) < 0:
        raise HerdError(f"token ids must lie in [0, {limit})")
    counts = (tokens == config.image_token_id).sum(dim=1).tolist()
    for row, (n_tokens, n_images) in enumerate(zip(counts, images_per_row.tolist(), strict=True)):
        if n_tokens > n_images:
            raise HerdError(
                f"row {row}: {n_tokens} <|image|> tokens but {n_images} images: an <|image|> "
                "token without an image"
            )
        if n_images > n_tokens:
            raise HerdError(
                f"row {row}: {n_images} images but {n_tokens} <|image|> tokens: an image without "
                "an <|image|> token to show it at"
            )


class ImageKVCache(KVCache):
    """herd's static text KV cache plus what the cross-attention layers read, set by the prefill
    that brings the images: each layer's image keys and values, and for every position which
    images it sees (positions after the prompt see what its last token saw: generated tokens
    continue the last image's span, as transformers extends the mask)."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(config, batch_size, max_len, device, dtype)
        self.image_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.visible: torch.Tensor | None = None  # [B, max_len, N]
        self.tile_mask: torch.Tensor | None = None  # [B, N, tiles]

    @property
    def has_images(self) -> bool:
        return self.visible is not None

    def set_images(self, kv, visible: torch.Tensor, tile_mask: torch.Tensor) -> None:
        """Keep `kv` (per cross-attention layer) and `visible` [B, T, N] for positions 0..T-1."""
        B, T, N = visible.shape
        later = visible[:, -1:].expand(B, self.max_len - T, N)
        self.image_kv = [(k.detach(), v.detach()) for k, v in kv]
        self.visible = torch.cat([visible, later], dim=1)
        self.tile_mask = tile_mask


# The modules a vision model adds to its text model (what an adapter run trains).
ADDED_PARTS = ("vision", "cross_layers", "extra_embed")


class VisionLanguageModel(Transformer):
    """tokens [B, T] (+ images) -> logits [B, T, vocab_size]; a `Transformer` for text alone."""

    def __init__(self, config: ModelConfig) -> None:
        if config.vision is None:
            raise HerdError("a vision model needs config.vision (an image encoder's shape)")
        super().__init__(config)
        v = config.vision
        self.extra_embed = nn.Embedding(v.extra_tokens, config.dim)
        self.cross_layers = nn.ModuleList(
            CrossAttentionBlock(config) for _ in v.cross_attention_layers
        )
        self.vision = VisionEncoder(v, config.dim)
        # Cross-attention layer k, at place p_k of the combined stack, comes after p_k - k text
        # blocks: it runs before text block p_k - k (or after the last block).
        self.cross_before: dict[int, list[int]] = {}
        for k, place in enumerate(v.cross_attention_layers):
            self.cross_before.setdefault(place - k, []).append(k)

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
    ) -> torch.Tensor:
        """`Transformer.forward`, with `images` and optionally `cross_mask` [B, T, N] (bool:
        which images each token sees; from the <|image|> tokens when None). With an
        `ImageKVCache`, images come with the prefill (from position 0) and later calls reuse
        them. Targets equal to an id past the vocabulary (<|image|>) are not counted."""
        cached = isinstance(cache, ImageKVCache) and cache.has_images
        T = tokens.shape[1]
        if images is None and not cached:
            # Text only: the text model alone. A decode step (one token, with a cache) is not
            # checked: the model cannot predict an id past its vocabulary, and a check would
            # stall the step on the host.
            if cache is None or T > 1:
                self._refuse_image_tokens(tokens, "no images were given")
            return super().forward(
                tokens, input_pos, cache, packed, targets, reduction, last, hidden
            )
        if packed is not None:
            raise HerdError("packed sequences with images are not supported yet")
        rope, mask = self._rope_and_mask(T, input_pos, cache)

        image_state = self._image_state(tokens, images, cross_mask, cache, input_pos)
        return self.decode(
            tokens, image_state, rope, input_pos, cache, mask, targets, reduction, last, hidden
        )

    def decode(
        self,
        tokens: torch.Tensor,
        image_state,
        rope: torch.Tensor,
        input_pos: torch.Tensor | None,
        cache,
        mask: torch.Tensor | None,
        targets: torch.Tensor | None = None,
        reduction: str = "sum",
        last: torch.Tensor | None = None,
        hidden: bool = False,
        video_state=None,
    ) -> torch.Tensor:
        """The decoder over `tokens` with the cross-attention layers' inputs already computed:
        `image_state` is (each layer's keys and values, `image_keys_values`; the pair
        `cross_attention_mask` gives), or None where no token sees a picture (the layers would
        add exact zeros, so they are skipped); `video_state` the same for a video model's video
        layers (herd/model/video_model.py; None for this model, which has none). The part of
        `forward` that a caller holding its own image state (the server's KV slots) runs too.
        `rope`, `input_pos`, `cache` and `mask` go to the text blocks as in
        `Transformer.forward`."""
        x = self._embed(tokens)
        n = len(self.layers)
        for i in range(n + 1):
            for k in self.cross_before.get(i, ()):
                x = self._cross(k, x, image_state, video_state)
            if i < n:
                x = self.layers[i](x, rope, input_pos, cache, mask)
        return self._outputs(x, targets, reduction, last, hidden)

    def _cross(self, k: int, x: torch.Tensor, image_state, video_state) -> torch.Tensor:
        """Image cross-attention layer k over `x` (nothing without an image state)."""
        if image_state is None:
            return x
        kv, masks = image_state
        return self.cross_layers[k](x, kv[k], *masks)

    def _image_state(self, tokens, images, cross_mask, cache, input_pos):
        """(image keys and values, cross-attention masks) for the image layers: of `images`
        (stored in an `ImageKVCache`, which they must reach at position 0), else of the cache's
        pictures; None when no token can see a picture (a token showing one is refused)."""
        if images is not None:
            images = prepare_images(images, tokens, self.config)
            kv = self.image_keys_values(images)
            visible = self._visible(tokens, images, cross_mask)
            if cache is not None:
                if input_pos is None or int(input_pos[0]) != 0:
                    raise HerdError("images come with the prefill, from position 0")
                cache.set_images(kv, visible, images.aspect_ratio_mask)
            return kv, cross_attention_mask(visible, images.aspect_ratio_mask, self._patches)
        if isinstance(cache, ImageKVCache) and cache.has_images:
            if tokens.shape[1] > 1:
                self._refuse_image_tokens(tokens, "images come with the prefill")
            visible = cache.visible[:, input_pos]
            return cache.image_kv, cross_attention_mask(visible, cache.tile_mask, self._patches)
        if cache is None or tokens.shape[1] > 1:
            self._refuse_image_tokens(tokens, "no images were given")
        return None

    def _rope_and_mask(self, T: int, input_pos, cache):
        """The rotary rows of T tokens at `input_pos` (0..T-1 when None) and, with a cache, its
        attention mask (without one the blocks attend causally: None)."""
        if cache is None:
            return (self.rope[:T] if input_pos is None else self.rope[input_pos]), None
        return self.rope[input_pos], cache.mask(input_pos)

    @property
    def _patches(self) -> int:
        return self.config.vision.patches

    def image_keys_values(self, images: Images) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encode `images` (as `prepare_images` returns them) once; each cross-attention layer's
        keys and values of the image tokens."""
        tokens = self.vision(images.pixels, images.aspect_ratio_ids, images.aspect_ratio_mask)
        return [layer.attn.keys_values(tokens) for layer in self.cross_layers]

    def _visible(self, tokens: torch.Tensor, images: Images, cross_mask: torch.Tensor | None):
        B, T = tokens.shape
        N = images.pixels.shape[1]
        if cross_mask is None:
            return image_visibility(tokens, self.config.image_token_id, N)
        if tuple(cross_mask.shape) != (B, T, N):
            raise HerdError(
                f"cross_mask has shape {list(cross_mask.shape)}, expected [{B}, {T}, {N}] "
                "(which images each token sees)"
            )
        return cross_mask.bool()

    def _refuse_image_tokens(self, tokens: torch.Tensor, why: str) -> None:
        count = int((tokens == self.config.image_token_id).sum())
        if count:
            raise HerdError(
                f"{count} <|image|> tokens but {why}: an <|image|> token without an image"
            )

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vocabulary rows from `embed`, ids past it from `extra_embed`, without a host sync."""
        return embed_with_extra(self.embed, self.extra_embed, tokens, self.config.vocab_size)

    def _outputs(self, x, targets, reduction, last, hidden) -> torch.Tensor:
        """As `Transformer.forward` ends: the loss, final hidden states, or logits."""
        if targets is not None:
            targets = targets.masked_fill(targets >= self.config.vocab_size, -100)
            return linear_cross_entropy(self.norm(x), self.output.weight, targets, reduction)
        if last is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last]
        return self.norm(x) if hidden else self.output(self.norm(x))

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """The text model's initialisation for every matrix and norm, then the adapter's: every
        gate 0 (an untrained adapter is the identity: the model is its text model) and every
        bias 0."""
        super().init_weights(seed)
        for name, p in self.named_parameters():
            if name.endswith("gate") or name.endswith("bias"):
                p.zero_()
