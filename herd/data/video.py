"""Frames from a video for a video adapter (Llama 3 section 7.2), and clips written for tests.

The Llama 3 video adapter sees up to 64 frames sampled uniformly over a whole clip, each then
processed by the image encoder as a picture is. `read_frames` gives those frames as RGB Pillow
images at their own size (the image processor tiles them later) from a video file PyAV/ffmpeg
decodes (mp4, webm, avi, gif, ...), the raw bytes of one, or a folder of frame images.

Sampling rule: of n frames, frame i of `count` is index floor((i + 1/2) * n / count), the frame
under the centre of the i-th of `count` equal slices of the clip. Indices never decrease; with
fewer frames than `count` some repeat (every frame is then used at least once), which is what
uniform sampling gives rather than a shorter list the caller must pad.

A video is decoded twice at most and never held whole: the frame count comes from the stream's
header when it states one (else from a first pass that only counts), and the decoding pass keeps
only the wanted frames and stops after the last. Problems are one-line `HerdError`s naming the
file (or the `name` given for bytes).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import av
import numpy as np
from PIL import Image

from herd.errors import HerdError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# What PyAV raises for a file ffmpeg cannot read: FFmpegError covers InvalidDataError and the
# errno-style errors; OSError covers a file that vanished or cannot be read.
_DECODE_ERRORS = (av.FFmpegError, OSError)


def sample_indices(n: int, count: int) -> list[int]:
    """The `count` frame indices of a clip of `n` frames: the centre of each of `count` slices."""
    # Integer arithmetic so that the rule is exact for any n, count (no float rounding ties).
    return [(2 * i + 1) * n // (2 * count) for i in range(count)]


def read_frames(
    source: str | os.PathLike | bytes, count: int, name: str | None = None
) -> list[Image.Image]:
    """`count` RGB frames sampled uniformly over the whole clip (see the module's rule)."""
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<video bytes>"
        data = bytes(source)
        if count < 1:
            raise HerdError(f"{label}: frame count {count} must be at least 1")
        return _read_video(lambda: io.BytesIO(data), label, count)
    path = Path(source)
    label = name or str(path)
    if count < 1:
        raise HerdError(f"{label}: frame count {count} must be at least 1")
    if path.is_dir():
        return _read_folder(path, label, count)
    if not path.exists():
        raise HerdError(f"{label}: no such video file or frame folder")
    return _read_video(lambda: str(path), label, count)


def _first_line(error: BaseException) -> str:
    # ffmpeg messages may carry a path or several lines; the error we raise must stay one line.
    text = (getattr(error, "strerror", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _open(opener, label: str):
    try:
        container = av.open(opener(), mode="r")
    except _DECODE_ERRORS as e:
        raise HerdError(f"{label}: not a video file ffmpeg can read ({_first_line(e)})") from None
    if not container.streams.video:
        container.close()
        raise HerdError(f"{label}: has no video stream (expected a video, not audio or data only)")
    return container


def _count_frames(opener, label: str) -> int:
    """Frames in the first video stream: the header's count, else one pass that only counts."""
    container = _open(opener, label)
    try:
        stated = container.streams.video[0].frames
        if stated > 0:
            return stated
        return sum(1 for _ in container.decode(video=0))
    except _DECODE_ERRORS as e:
        raise HerdError(f"{label}: a damaged video ({_first_line(e)})") from None
    finally:
        container.close()


def _decode_wanted(opener, label: str, wanted: list[int]) -> tuple[dict[int, Image.Image], int]:
    """The frames at the `wanted` indices, and how many frames were decoded to reach them."""
    targets = set(wanted)
    last = max(wanted)
    kept: dict[int, Image.Image] = {}
    decoded = 0
    container = _open(opener, label)
    try:
        container.streams.video[0].thread_type = "AUTO"
        for index, frame in enumerate(container.decode(video=0)):
            decoded = index + 1
            if index in targets:
                kept[index] = frame.to_image().convert("RGB")
            if index >= last:
                break
    except _DECODE_ERRORS as e:
        raise HerdError(f"{label}: a damaged video ({_first_line(e)})") from None
    finally:
        container.close()
    return kept, decoded


def _read_video(opener, label: str, count: int) -> list[Image.Image]:
    n = _count_frames(opener, label)
    if n == 0:
        raise HerdError(f"{label}: the video stream has no decodable frames")
    wanted = sample_indices(n, count)
    kept, decoded = _decode_wanted(opener, label, wanted)
    if len(kept) < len(set(wanted)):
        # The header overstated the length (decoding ended early): sample again over the frames
        # that really decode, so the picks still span the whole clip.
        if decoded == 0:
            raise HerdError(f"{label}: the video stream has no decodable frames")
        wanted = sample_indices(decoded, count)
        kept, _ = _decode_wanted(opener, label, wanted)
    return [kept[i] for i in wanted]


def _natural_key(name: str) -> list:
    # frame2 before frame10: digit runs compare as numbers, the rest as (case-folded) text.
    return [
        (0, int(part), "") if part.isdecimal() else (1, 0, part.casefold())
        for part in re.split(r"(\d+)", name)
    ]


def _read_folder(folder: Path, label: str, count: int) -> list[Image.Image]:
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise HerdError(
            f"{label}: a frame folder with no images (expected {', '.join(FRAME_SUFFIXES)} files)"
        )
    wanted = sample_indices(len(files), count)
    # Only the sampled frames are read, as only the sampled frames of a video are decoded.
    loaded = {i: _load_image(files[i]) for i in sorted(set(wanted))}
    return [loaded[i] for i in wanted]


def _load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise HerdError(f"{path}: not a readable frame image ({_first_line(e)})") from None


def write_video(frames, path: str | os.PathLike, fps: int = 8) -> Path:
    """Encode `frames` (PIL images or HxWx3 uint8 arrays, all one size) as an mp4 at `path`.

    H.264 (libx264) when this PyAV has it, else MPEG-4 part 2; yuv420p, which halves chroma in
    both directions and so needs an even width and height.
    """
    path = Path(path)
    arrays = [_as_rgb_array(frame, path, i) for i, frame in enumerate(frames)]
    if not arrays:
        raise HerdError(f"{path}: no frames to write (expected at least one)")
    height, width = arrays[0].shape[:2]
    if width % 2 or height % 2:
        raise HerdError(
            f"{path}: frames are {width}x{height}; yuv420p video needs an even width and height"
        )
    for i, array in enumerate(arrays):
        if array.shape[:2] != (height, width):
            raise HerdError(
                f"{path}: frame {i} is {array.shape[1]}x{array.shape[0]}, "
                f"expected {width}x{height} like frame 0"
            )
    if fps < 1:
        raise HerdError(f"{path}: fps {fps} must be at least 1")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    try:
        with av.open(str(path), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                # Near-lossless, so a rendered clip decodes to nearly the pixels it was given.
                stream.options = {"crf": "12"}
            for array in arrays:
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    except _DECODE_ERRORS as e:
        raise HerdError(f"{path}: could not write the video ({_first_line(e)})") from None
    return path


def _as_rgb_array(frame, path: Path, i: int) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise HerdError(
            f"{path}: frame {i} is {array.dtype} {array.shape}; expected a PIL image or an "
            "HxWx3 uint8 array"
        )
    return np.ascontiguousarray(array)
