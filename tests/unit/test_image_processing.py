"""herd/model/image_processing.py against transformers' Mllama image processor (its Pillow
backend, the one that runs without torchvision): pixel values, aspect-ratio ids, tile masks and
tile counts on generated pictures of many shapes and modes, the layout and resize arithmetic on
a grid of sizes, and the one-line errors for pictures that cannot be used."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.mllama import image_processing_pil_mllama as hf_mllama

from herd.errors import HerdError
from herd.model.config import VisionConfig
from herd.model.image_processing import CLIP_MEAN, CLIP_STD, ImageProcessor, read_image, to_rgb

SMALL = 56  # tile side for the fast cases (the model's 560 scaled down tenfold)


def _picture(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Random pixels in `mode` (RGBA with a varied alpha, P with a transparent palette entry)."""
    rng = np.random.default_rng(seed)
    if mode == "P":
        image = Image.fromarray(rng.integers(0, 16, (height, width), dtype=np.uint8), "L")
        image = image.convert("P")
        image.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tolist())
        image.info["transparency"] = 3
        return image
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def _transformers(tile: int, max_tiles: int = 4):
    return hf_mllama.MllamaImageProcessorPil(
        size={"height": tile, "width": tile},
        max_image_tiles=max_tiles,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def _assert_same(batch, tile: int, max_tiles: int = 4) -> None:
    config = VisionConfig(image_size=tile, max_tiles=max_tiles, aspect_ratios=_layouts(max_tiles))
    processor = ImageProcessor(config)
    ours = processor(batch)
    theirs = _transformers(tile, max_tiles)(batch, return_tensors="pt")
    assert ours.pixels.dtype == theirs["pixel_values"].dtype == torch.float32
    assert ours.pixels.shape == theirs["pixel_values"].shape
    assert torch.equal(ours.pixels, theirs["pixel_values"])  # exact: the same roundings
    assert torch.equal(ours.aspect_ratio_ids, theirs["aspect_ratio_ids"])
    assert torch.equal(ours.aspect_ratio_mask, theirs["aspect_ratio_mask"])
    assert processor.tile_counts(ours) == theirs["num_tiles"]


def _layouts(max_tiles: int) -> tuple[tuple[int, int], ...]:
    return tuple(hf_mllama.get_all_supported_aspect_ratios(max_tiles))


def test_layouts_are_the_models():
    """transformers numbers the layouts as herd's default VisionConfig does (id i + 1 = entry i)."""
    assert _layouts(4) == VisionConfig().aspect_ratios


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([[_picture(200, 40)]], id="wide"),
        pytest.param([[_picture(30, 150)]], id="tall"),
        pytest.param([[_picture(5, 3)]], id="tiny"),
        pytest.param([[_picture(1, 1)]], id="one-pixel"),
        pytest.param([[_picture(SMALL, SMALL)]], id="one-tile-exactly"),
        pytest.param([[_picture(500, 330)]], id="larger-than-4-tiles"),
        pytest.param([[_picture(3, 400)]], id="needle"),
        pytest.param([[_picture(90, 70, "RGBA")]], id="rgba"),
        pytest.param([[_picture(80, 45, "L")]], id="grayscale"),
        pytest.param([[_picture(60, 100, "LA")]], id="grayscale-alpha"),
        pytest.param([[_picture(70, 33, "P")]], id="palette-transparency"),
        pytest.param(
            [
                [_picture(100, 30, seed=1), _picture(7, 200, "RGBA", seed=2)],
                [_picture(3, 3, "L", seed=3)],
                [_picture(400, 300, seed=4), _picture(57, 112, seed=5), _picture(112, 56, seed=6)],
            ],
            id="batch-of-rows",
        ),
    ],
)
def test_matches_transformers(batch):
    _assert_same(batch, SMALL)


def test_matches_transformers_at_560():
    """The released model's tile size, once: a 4:3 photo-sized picture (2 x 2 tiles)."""
    _assert_same([[_picture(1000, 750, seed=7)]], 560)


def test_matches_transformers_with_two_tiles():
    """A model with max_tiles 2 (three layouts), as the small test models use."""
    batch = [[_picture(90, 30, seed=8), _picture(20, 90, seed=9), _picture(40, 40, seed=10)]]
    _assert_same(batch, SMALL, max_tiles=2)


def test_layout_and_size_arithmetic_on_a_grid():
    """Every layout choice and resized size on a grid of sizes around the tile's multiples,
    against transformers' own functions (exact ties and rounding included)."""
    sides = [1, 2, 13, 27, 28, 29, 55, 56, 57, 84, 111, 112, 113, 168, 224, 225, 300, 1001]
    for tile, max_tiles in ((56, 4), (56, 2), (28, 6)):
        processor = ImageProcessor(
            VisionConfig(image_size=tile, max_tiles=max_tiles, aspect_ratios=_layouts(max_tiles))
        )
        hf_mllama.get_optimal_tiled_canvas.cache_clear()
        for h, w in itertools.product(sides, sides):
            canvas_h, canvas_w = hf_mllama.get_optimal_tiled_canvas(h, w, max_tiles, tile)
            rows, cols = processor.layout(h, w)
            assert (rows * tile, cols * tile) == (canvas_h, canvas_w), (h, w, tile, max_tiles)
            expected = hf_mllama.get_image_size_fit_to_canvas(h, w, canvas_h, canvas_w, tile)
            assert processor.resized_size(h, w, rows, cols) == tuple(expected), (h, w, tile)


def test_files_match_transformers(tmp_path):
    """Files as transformers reads paths: upright by EXIF orientation, alpha dropped."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    files = {
        "rgb.png": (_picture(120, 50, seed=11), {}),
        "rgba.png": (_picture(40, 70, "RGBA", seed=12), {}),
        "la.png": (_picture(90, 33, "LA", seed=13), {}),
        "palette.png": (_picture(30, 30, "P", seed=14), {"transparency": 3}),
        "rotated.png": (_picture(60, 20, seed=15), {"exif": exif}),
        "photo.jpg": (_picture(70, 100, seed=16), {"quality": 90}),
        "gray.jpg": (_picture(100, 70, "L", seed=17), {}),
    }
    for name, (picture, options) in files.items():
        picture.save(tmp_path / name, **options)
    _assert_same([[str(tmp_path / name) for name in files]], SMALL)
    assert read_image(tmp_path / "rotated.png").size == (20, 60)


def test_in_memory_transparency_is_composited_onto_white():
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


def _error(call) -> str:
    with pytest.raises(HerdError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_files(tmp_path):
    processor = ImageProcessor(VisionConfig(image_size=SMALL))
    missing = tmp_path / "nope.png"
    assert _error(lambda: processor([[missing]])) == f"{missing}: no such image file"
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    assert _error(lambda: processor([[text]])).startswith(f"{text}: not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _error(lambda: processor([[empty]])).startswith(f"{empty}: not an image")
    assert _error(lambda: processor([[tmp_path]])).startswith(f"{tmp_path}: not a file")
    whole = tmp_path / "whole.png"
    _picture(64, 64, seed=13).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:200])
    assert _error(lambda: processor([[cut]])).startswith(f"{cut}: a damaged image file")


def test_bad_pictures(tmp_path):
    processor = ImageProcessor(VisionConfig(image_size=SMALL))
    message = _error(lambda: processor([[_picture(8, 8), Image.new("RGB", (0, 5))]]))
    assert message == "image 2 of row 1: has no pixels (0x5); expected a non-empty image"
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 6), 40000, dtype=np.uint16)).save(deep)  # a 16-bit PNG
    message = _error(lambda: processor([[deep]]))
    assert message.startswith(f"{deep}: pixel mode I") and "expected an 8-bit image" in message
    message = _error(lambda: processor([[Image.new("F", (4, 4))]]))
    assert message.startswith("image 1 of row 1: pixel mode F")
    assert _error(lambda: processor([[], []])) == "no images to process"
