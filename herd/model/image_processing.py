"""Llama 3.2 Vision's image processor: pictures -> the `Images` the vision model reads.

The encoder sees an image as up to `max_tiles` square tiles of `image_size` pixels laid out in one
of the model's `aspect_ratios` (rows x columns). For each picture this module:

1. converts it to 8-bit RGB: a file as transformers' and Meta's loaders read one (upright by its
   EXIF orientation, any alpha channel dropped), an in-memory picture as transformers'
   processor converts one (transparency composited onto white);
2. chooses the layout whose canvas needs the least upscaling (or, when every canvas is smaller
   than the image, the least downscaling), the smaller canvas on a tie;
3. resizes the picture, keeping its aspect ratio, to fill that canvas along one side (never
   below one tile's side), with Pillow's bilinear filter on 8-bit pixels;
4. pads it with black at the bottom and right to the whole canvas and cuts it into tiles, row
   by row;
5. scales pixels to [0, 1] and normalises them with CLIP's mean and standard deviation (padding
   included: a black pixel becomes -mean/std, as the model was trained).

Each step reproduces transformers' `MllamaImageProcessor` (its Pillow backend, the one that runs
without torchvision) value for value, for files and in-memory pictures alike;
tests/unit/test_image_processing.py checks that bit for bit. Canvas choice and tile order follow
Meta's reference (llama-models `multimodal/image_transform.py`).

Pictures that cannot be used (no such file, not an image, no pixels, 16-bit or floating-point
pixels, which transformers would silently clip to 255) raise `HerdError` naming the file, so the
command line reports them in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from herd.errors import HerdError
from herd.model.config import VisionConfig
from herd.model.multimodal import Images

# CLIP's statistics (Radford et al. 2021), which Llama 3.2 Vision's encoder was trained with; the
# released checkpoints' preprocessor_config.json names the same numbers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Modes whose pixels are 8 bits per channel: Pillow converts them to RGB without loss of range.
# 16-bit and floating-point modes ("I;16", "I", "F") would be clipped to 255: refused instead.
EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)

Picture = Image.Image | str | Path


def read_image(path: str | Path) -> Image.Image:
    """The picture in the file at `path` as 8-bit RGB, upright (its EXIF orientation applied, as
    cameras record it) and any alpha channel dropped, as transformers' `load_image` and Meta's
    chat format read files; a `HerdError` naming the file when it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise HerdError(f"{path}: no such image file")
    if not path.is_file():
        raise HerdError(f"{path}: not a file (expected an image such as PNG or JPEG)")
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not deep in the resize
            _check_pixels(opened, str(path))
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except UnidentifiedImageError:
        raise HerdError(f"{path}: not an image Pillow can read (expected PNG, JPEG, ...)") from None
    except Image.DecompressionBombError as e:
        raise HerdError(f"{path}: too many pixels to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise HerdError(f"{path}: a damaged image file ({e})") from None
    return image


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """`image` as 8-bit RGB, transparency composited onto white (a transparent background shown
    as white, not as whatever colour its pixels store), as transformers' processor converts
    in-memory pictures; `name` says which picture in errors."""
    _check_pixels(image, name)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _check_pixels(image: Image.Image, name: str) -> None:
    """A `HerdError` unless `image` has pixels, 8 bits per channel."""
    width, height = image.size
    if width == 0 or height == 0:
        raise HerdError(f"{name}: has no pixels ({width}x{height}); expected a non-empty image")
    if image.mode not in EIGHT_BIT_MODES:
        raise HerdError(
            f"{name}: pixel mode {image.mode} (16-bit or floating point); expected an 8-bit "
            "image (RGB, RGBA, grayscale, palette, CMYK)"
        )


class ImageProcessor:
    """Cuts pictures into the tiles a vision model with `config` reads (see the module's
    docstring); `processor(batch)` gives the batch's `Images`."""

    def __init__(
        self,
        config: VisionConfig,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if config.channels != 3:
            raise HerdError(f"vision.channels is {config.channels}; pictures are read as RGB (3)")
        self.tile = config.image_size
        self.max_tiles = config.max_tiles
        self.layouts = config.aspect_ratios
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def layout(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of tiles for a picture of `height` x `width` pixels.

        Each layout's scale is the largest that fits the picture in its canvas. Upscaling least
        keeps the most detail per pixel without inventing any; with no canvas as large as the
        picture, the least downscaling loses the least. Exact ties (a small picture fits several
        canvases at scale 1 / tile) go to the smaller canvas, the first of equals in the model's
        order, so fewer tiles are spent on padding.
        """
        scales = [min(r * self.tile / height, c * self.tile / width) for r, c in self.layouts]
        up = [s for s in scales if s >= 1]
        best = min(up) if up else max(scales)
        chosen = [lay for lay, s in zip(self.layouts, scales, strict=True) if s == best]
        return min(chosen, key=lambda lay: lay[0] * lay[1])

    def resized_size(self, height: int, width: int, rows: int, cols: int) -> tuple[int, int]:
        """(height, width) of the picture resized into a canvas of `rows` x `cols` tiles.

        Each side is first clamped between one tile and the canvas; the side that must shrink
        more (or grow less) takes its clamped length, and the other follows the aspect ratio,
        rounded down (at least 1 pixel, at most its clamped length). A picture smaller than one
        tile is thus enlarged until a side reaches the tile, never past the canvas.
        """
        target_h = min(max(height, self.tile), rows * self.tile)
        target_w = min(max(width, self.tile), cols * self.tile)
        scale_h, scale_w = target_h / height, target_w / width
        if scale_w < scale_h:
            return min(int(height * scale_w) or 1, target_h), target_w
        return target_h, min(int(width * scale_h) or 1, target_w)

    def tiles(
        self, picture: Picture, name: str = "image", layout: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """One picture's normalised tiles [rows * cols, 3, S, S] and its layout (rows, cols):
        the best of the model's layouts, or `layout` (a video frame takes (1, 1))."""
        if not isinstance(picture, Image.Image):
            name, picture = str(picture), read_image(picture)
        image = to_rgb(picture, name)
        width, height = image.size
        rows, cols = layout or self.layout(height, width)
        new_h, new_w = self.resized_size(height, width, rows, cols)
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        S = self.tile
        canvas = torch.zeros(3, rows * S, cols * S, dtype=torch.uint8)
        canvas[:, :new_h, :new_w] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        # Rescale in float64, then round once to float32, then normalise in float32: the same
        # roundings as transformers, so the pixels agree exactly.
        pixels = (canvas.double() * (1 / 255)).float()
        pixels = (pixels - self.mean) / self.std
        tiles = pixels.view(3, rows, S, cols, S).permute(1, 3, 0, 2, 4)
        return tiles.reshape(rows * cols, 3, S, S), (rows, cols)

    def __call__(self, batch: Sequence[Sequence[Picture]]) -> Images:
        """`Images` for a batch: `batch[b]` is row b's pictures (PIL images or file paths), in
        the order of the row's <|image|> tokens.

        pixels [B, N, max_tiles, 3, S, S] (N the most pictures in a row; unused tiles and slots
        are zeros), aspect_ratio_ids [B, N] (layout i is id i + 1; 0 an empty slot) and
        aspect_ratio_mask [B, N, max_tiles] (1 for the tiles a picture uses, and, as
        transformers marks it, the first tile of every slot, empty ones too).
        """
        if not batch or not any(batch):
            raise HerdError("no images to process")
        N, S = max(len(row) for row in batch), self.tile
        pixels = torch.zeros(len(batch), N, self.max_tiles, 3, S, S)
        ids = torch.zeros(len(batch), N, dtype=torch.long)
        mask = torch.zeros(len(batch), N, self.max_tiles, dtype=torch.long)
        mask[:, :, 0] = 1
        for b, row in enumerate(batch):
            for n, picture in enumerate(row):
                tiles, layout = self.tiles(picture, f"image {n + 1} of row {b + 1}")
                pixels[b, n, : len(tiles)] = tiles
                ids[b, n] = self.layouts.index(layout) + 1
                mask[b, n, : len(tiles)] = 1
        return Images(pixels, ids, mask)

    def tile_counts(self, images: Images) -> list[list[int]]:
        """Tiles each picture of `images` uses, row by row (transformers' `num_tiles`), read from
        the layout ids."""
        counts = [1] + [r * c for r, c in self.layouts]
        return [[counts[i] for i in row if i > 0] for row in images.aspect_ratio_ids.tolist()]


def video_frames(pictures: Sequence, vision: VisionConfig, name: str = "video") -> torch.Tensor:
    """Frames (RGB PIL images or files) as tiles [F, 3, S, S]: each resized into one tile as
    the image processor fits a picture into the 1x1 layout."""
    processor = ImageProcessor(vision)
    tiles = [processor.tiles(p, f"{name}: frame {i + 1}", layout=(1, 1))[0] for i, p in
             enumerate(pictures)]  # fmt: skip
    if not tiles:
        raise HerdError(f"{name}: no frames")
    return torch.cat(tiles)
