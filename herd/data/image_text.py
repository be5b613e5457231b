"""Image-text training data for a vision adapter (Llama 3 section 7; Llama 3.2 Vision).

Rows (JSONL, Parquet, folders of them, or a Hugging Face dataset, read as SFT's are) take one of
three forms; each is one training sample, padded (not packed) into a batch row:

    {"image": PICTURE or [PICTURE, ...], "text": "a caption"}      (or "images")
        ids: one <|image|> per picture, then BOS, the caption, EOS, as transformers'
        MllamaProcessor lays out a plain prompt (`<|image|><|begin_of_text|>...`); loss on the
        caption and its EOS.
    {"text": "plain text"}
        a text-only sample: BOS text EOS, loss on everything after BOS.
    {"messages": [...], "images": [PICTURE, ...] (optional)}
        a conversation in the tokenizer's chat format with the assistant's turns as targets
        (herd/data/chat_data.py's rules and loss mask). A user message's content may be a
        list of OpenAI-style parts: {"type": "text", "text": ...}, {"type": "image", "path" |
        "image": PICTURE}, {"type": "image_url", "image_url": {"url": PICTURE}}, or a bare
        {"type": "image"} that takes the row's next "images" entry (TRL's layout). Each image
        part becomes one <|image|> id where it stands, as Meta's chat format encodes content.

A PICTURE is a file path (relative to the JSONL/Parquet file), a `data:image/...;base64,` URL,
or a Hugging Face Image value {"bytes": ..., "path": ...}. The <|image|> id is the model's (the
first past its vocabulary), given by the caller; labels there are IGNORE_INDEX.

Problems are one line naming FILE:LINE and the field ("image 2", "messages[1].content[0]"): a
missing or unreadable picture, a row with neither text nor messages, more "images" than image
parts (or fewer), image parts outside a user turn. Files are checked when rows are read (Pillow
reads their headers); pixels are decoded when a batch is built, so a file damaged past its
header fails there, naming its row.

This module knows pictures, not the model: the caller's `tiler(picture, name)` cuts a picture
(a Path or an RGB PIL image) into tiles and its aspect-ratio id (herd/model/image_processing.py).
`ImageTextBatches` collates: tokens right-padded to the batch's longest row, pictures to the
batch's most pictures per row and most tiles per picture, absent slots with aspect-ratio id 0.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from herd.data.chat_data import ChatData, load_examples
from herd.data.media_chat import (
    encode_caption,
    encode_media_chat,
    row_folder,
    split_media_parts,
)
from herd.data.objectives import IGNORE_INDEX
from herd.data.padded_batches import PaddedBatches, padded_tokens
from herd.errors import HerdError

Picture = Path | bytes  # a file, or an encoded file's bytes (a data URL, a Parquet cell)
Tiler = Callable[[object, str], tuple[torch.Tensor, int]]


@dataclass
class ImageTextExample:
    ids: list[int]
    mask: list[int]  # 1 where the token is a target
    pictures: list[Picture]  # in the order of the <|image|> ids
    source: str  # FILE:LINE


# --- pictures --------------------------------------------------------------------------------------


def _picture(value: object, base: Path | None, what: str) -> Picture:
    """A row's PICTURE as a checked file path or encoded bytes; ValueError naming `what`."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # HF Image feature
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str) and value.startswith("data:"):
        head, comma, payload = value.partition(",")
        if not comma or ";base64" not in head:
            raise ValueError(f"{what}: a data URL must be data:image/...;base64,...")
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise ValueError(f"{what}: the data URL is not valid base64") from None
    elif isinstance(value, str) and value.strip():
        path = Path(value.removeprefix("file://"))
        path = path if path.is_absolute() or base is None else base / path
        if not path.is_file():
            raise ValueError(f"{what}: {path}: no such image file")
        try:
            Image.open(path).close()  # the header only: pixels are decoded per batch
        except (UnidentifiedImageError, OSError, ValueError):
            raise ValueError(f"{what}: {path}: not an image Pillow can read") from None
        return path
    else:
        raise ValueError(f"{what}: expected a file path, a data: URL or image bytes")
    try:
        Image.open(io.BytesIO(data)).close()
    except (UnidentifiedImageError, OSError, ValueError):
        raise ValueError(f"{what}: the image bytes are not an image Pillow can read") from None
    return data


def decode_picture(picture: Picture, name: str):
    """A Path as it is (the tiler reads files), or encoded bytes as an upright RGB image, read
    as a file is (EXIF orientation applied, alpha dropped)."""
    if isinstance(picture, Path):
        return picture
    try:
        with Image.open(io.BytesIO(picture)) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise HerdError(f"{name}: a damaged image ({e})") from None


# --- rows ------------------------------------------------------------------------------------------


def _pictures_of(row: dict, base: Path | None) -> list[Picture]:
    for key in ("image", "images"):
        if row.get(key) is not None:
            value = row[key]
            items = value if isinstance(value, list) else [value]
            return [_picture(v, base, f"{key} {i + 1}") for i, v in enumerate(items)]
    return []


def _chat(tok, row: dict, pictures: list[Picture], base, image_id: int):
    """Ids, loss mask and pictures of a conversation whose user turns may hold pictures; bare
    image parts take the row's "images" in order, all of which must be used."""
    pending = list(pictures)

    def read(part: dict, what: str) -> Picture:
        if part["type"] == "image_url":
            url = part.get("image_url")
            return _picture(url.get("url") if isinstance(url, dict) else url, base, what)
        if part.get("path") is not None or part.get("image") is not None:
            value = part.get("path") if part.get("path") is not None else part["image"]
            return _picture(value, base, what)
        if pending:
            return pending.pop(0)
        raise ValueError(f"{what}: an image part without a picture (no 'images' left)")

    plain, pieces = split_media_parts(row["messages"], ("image", "image_url"), read, "an image")
    if pending:
        raise ValueError(f"images: {len(pending)} more pictures than image parts in the messages")
    if tok.chat_format not in ("llama3", "llama2"):
        raise HerdError(f"{tok.path}: conversations need a Llama 3 or Llama 2 chat tokenizer")
    return encode_media_chat(tok, plain, pieces, image_id, "pictures")


def encode_row(tok, row: object, where: str, image_id: int) -> ImageTextExample:
    """One row as an example; ValueError naming the field that is wrong."""
    if isinstance(row, Exception):
        raise ValueError(str(row))
    if not isinstance(row, dict):
        raise ValueError("expected an object with 'text' or 'messages'")
    base = row_folder(where)
    pictures = _pictures_of(row, base)
    if row.get("messages") is not None:
        ids, mask, shown = _chat(tok, row, pictures, base, image_id)
        return ImageTextExample(ids, mask, shown, where)
    if row.get("text") is None:
        raise ValueError("neither 'text' nor 'messages' (expected one of them)")
    ids, mask = encode_caption(tok, [image_id] * len(pictures), row["text"])
    return ImageTextExample(ids, mask, pictures, where)


def load_image_text(
    tok,
    sources: str | Path | list,
    seq_len: int,
    image_id: int,
    on_long: str = "drop",
    strict: bool = False,
    split: str = "train",
) -> ChatData:
    """Examples of `sources` that fit `seq_len` positions (a sample of n ids fills n - 1);
    longer ones dropped, or with `on_long="truncate"` cut (pictures whose <|image|> was cut go
    too) and kept while a target remains. Malformed rows are skipped and reported, or fatal
    with `strict`."""
    if on_long not in ("drop", "truncate"):
        raise HerdError(f"data.too_long must be 'drop' or 'truncate', got {on_long!r}")

    def encode(row, where: str) -> ImageTextExample:
        return encode_row(tok, row, where, image_id)

    data = load_examples(sources, split, encode, seq_len, on_long, strict)
    for example in data.examples:  # a truncated example keeps the pictures it still shows
        example.pictures = example.pictures[: example.ids.count(image_id)]
    return data


# --- batches ---------------------------------------------------------------------------------------


@dataclass
class ImageTextBatch:
    """A padded micro-batch: tokens and targets [B, T]; with pictures, pixels [B, N, tiles, 3,
    S, S] and aspect_ratio_ids [B, N] (0: an empty slot), else both None."""

    inputs: torch.Tensor
    targets: torch.Tensor
    pixels: torch.Tensor | None = None
    aspect_ratio_ids: torch.Tensor | None = None

    def map(self, fn) -> ImageTextBatch:
        pixels, ids = self.pixels, self.aspect_ratio_ids
        return ImageTextBatch(
            fn(self.inputs),
            fn(self.targets),
            None if pixels is None else fn(pixels),
            None if ids is None else fn(ids),
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> ImageTextBatch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def loss_count(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def collate(examples: Sequence[ImageTextExample], tiler: Tiler, pad_id: int = 0) -> ImageTextBatch:
    """Examples as one batch: inputs ids[:-1], targets ids[1:] where the mask is 1, right-padded
    to the longest; pictures cut by `tiler` and padded to the most per row and tiles each."""
    inputs, targets = padded_tokens(examples, pad_id)
    rows = []
    for e in examples:
        row = []
        for i, picture in enumerate(e.pictures):
            name = f"{e.source}: image {i + 1}"
            try:
                row.append(tiler(decode_picture(picture, name), name))
            except HerdError as err:  # the processor names the file; add the row and field
                message = str(err)
                raise HerdError(
                    message if message.startswith(name) else f"{name}: {message}"
                ) from None
        rows.append(row)
    N = max(len(r) for r in rows)
    if N == 0:
        return ImageTextBatch(inputs, targets)
    tiles = max(len(t) for r in rows for t, _ in r)
    shape = next(t for r in rows for t, _ in r).shape[1:]
    pixels = torch.zeros(len(examples), N, tiles, *shape)
    ids = torch.zeros(len(examples), N, dtype=torch.long)
    for b, row in enumerate(rows):
        for n, (t, layout) in enumerate(row):
            pixels[b, n, : len(t)] = t
            ids[b, n] = layout
    return ImageTextBatch(inputs, targets, pixels, ids)


class ImageTextBatches(PaddedBatches):
    """Image-text micro-batches of `batch_size` samples (herd/data/padded_batches.py), pictures
    cut by `tiler` when a batch is built."""

    def __init__(
        self,
        examples: Sequence[ImageTextExample],
        batch_size: int,
        tiler: Tiler,
        seed: int = 0,
        pad_id: int = 0,
    ) -> None:
        super().__init__(examples, batch_size, lambda chosen: collate(chosen, tiler, pad_id), seed)
