"""Video-text training data for a video adapter (Llama 3 section 7.4).

Rows (JSONL, Parquet, folders of them, or a Hugging Face dataset, read as SFT's are), each one
training sample, padded (not packed) into a batch row:

    {"video": CLIP, "text": "a caption"}
        ids: <|video|>, then BOS, the caption, EOS (the image rows' layout with the clip's
        token); loss on the caption and its EOS.
    {"text": "plain text"}
        a text-only sample.
    {"messages": [...], "video": CLIP (optional)}
        a conversation in the Llama 3 chat format with the assistant's turns as targets. A user
        message's content may be a list of parts: {"type": "text", ...}, {"type": "video",
        "path" | "video": CLIP}, {"type": "video_url", "video_url": {"url": CLIP}}, or a bare
        {"type": "video"} that takes the row's "video". The part becomes <|video|> where it
        stands.

A CLIP is a video file PyAV reads (mp4, webm, avi, gif, ...) or a folder of frame images, the path
relative to the row's file. A row shows one clip at most (the model's rule). Problems are one line
naming FILE:LINE and the field: a missing clip, a second clip, a row with neither text nor
messages. Files are only checked for existence when rows are read; frames are decoded (sampled
evenly to `video.max_frames`, herd/data/video.py) when a batch is built, so an unreadable clip
fails there, naming its row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from herd.data.chat_data import ChatData, load_examples
from herd.data.media_chat import encode_caption, encode_media_chat, row_folder, split_media_parts
from herd.data.objectives import IGNORE_INDEX
from herd.data.padded_batches import PaddedBatches, padded_tokens
from herd.errors import HerdError

Framer = Callable[[Path, str], torch.Tensor]  # a clip -> its frames [F, 3, S, S]


@dataclass
class VideoTextExample:
    ids: list[int]
    mask: list[int]
    videos: list[Path]  # none or one
    source: str


def _clip(value: object, base: Path | None, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: expected a video file or frame folder path")
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.exists():
        raise ValueError(f"{what}: {path} does not exist")
    return path


def encode_row(tok, row: object, where: str, video_id: int) -> VideoTextExample:
    """One row as an example; ValueError naming the field that is wrong."""
    if isinstance(row, Exception):
        raise ValueError(str(row))
    if not isinstance(row, dict):
        raise ValueError("expected an object with 'text' or 'messages'")
    base = row_folder(where)
    pending = [_clip(row["video"], base, "video")] if row.get("video") is not None else []
    if row.get("messages") is not None:

        def read(part: dict, what: str) -> Path:
            if part["type"] == "video_url":
                url = part.get("video_url")
                return _clip(url.get("url") if isinstance(url, dict) else url, base, what)
            value = part.get("path") if part.get("path") is not None else part.get("video")
            if value is not None:
                return _clip(value, base, what)
            if pending:
                return pending.pop(0)
            raise ValueError(f"{what}: a video part without a clip (no 'video' left)")

        plain, pieces = split_media_parts(row["messages"], ("video", "video_url"), read, "a video")
        if pending:
            raise ValueError("video: the row's clip has no video part in the messages")
        ids, mask, shown = encode_media_chat(tok, plain, pieces, video_id, "a video")
        if len(shown) > 1:
            raise ValueError(f"messages: {len(shown)} video parts; a row shows one clip at most")
        return VideoTextExample(ids, mask, shown, where)
    if row.get("text") is None:
        raise ValueError("neither 'text' nor 'messages' (expected one of them)")
    ids, mask = encode_caption(tok, [video_id] * len(pending), row["text"])
    return VideoTextExample(ids, mask, pending, where)


def load_video_text(
    tok,
    sources: str | Path | list,
    seq_len: int,
    video_id: int,
    on_long: str = "drop",
    strict: bool = False,
    split: str = "train",
) -> ChatData:
    """Examples of `sources` that fit `seq_len` positions (load_image_text's rules; a clip whose
    <|video|> was cut by truncation goes too)."""
    if on_long not in ("drop", "truncate"):
        raise HerdError(f"data.too_long must be 'drop' or 'truncate', got {on_long!r}")

    def encode(row, where: str) -> VideoTextExample:
        return encode_row(tok, row, where, video_id)

    data = load_examples(sources, split, encode, seq_len, on_long, strict)
    for example in data.examples:
        example.videos = example.videos[: example.ids.count(video_id)]
    return data


@dataclass
class VideoTextBatch:
    """A padded micro-batch: tokens and targets [B, T]; with clips, frames [B, F, 3, S, S] and
    counts [B] (0 for a row without one), else both None."""

    inputs: torch.Tensor
    targets: torch.Tensor
    frames: torch.Tensor | None = None
    counts: torch.Tensor | None = None

    def map(self, fn) -> VideoTextBatch:
        frames, counts = self.frames, self.counts
        return VideoTextBatch(
            fn(self.inputs),
            fn(self.targets),
            None if frames is None else fn(frames),
            None if counts is None else fn(counts),
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> VideoTextBatch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def loss_count(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def collate(
    examples: Sequence[VideoTextExample], framer: Framer, pad_id: int = 0
) -> VideoTextBatch:
    """Examples as one batch: tokens right-padded to the longest row; each clip's frames from
    `framer`, padded to the batch's most frames."""
    inputs, targets = padded_tokens(examples, pad_id)
    clips = [framer(e.videos[0], f"{e.source}: video {e.videos[0]}") if e.videos else None
             for e in examples]  # fmt: skip
    shown = [c for c in clips if c is not None]
    if not shown:
        return VideoTextBatch(inputs, targets)
    most = max(len(c) for c in shown)
    frames = torch.zeros(len(examples), most, *shown[0].shape[1:])
    counts = torch.zeros(len(examples), dtype=torch.long)
    for b, clip in enumerate(clips):
        if clip is not None:
            frames[b, : len(clip)] = clip
            counts[b] = len(clip)
    return VideoTextBatch(inputs, targets, frames, counts)


class VideoTextBatches(PaddedBatches):
    """Video-text micro-batches of `batch_size` samples, clips decoded when a batch is built."""

    def __init__(
        self,
        examples: Sequence[VideoTextExample],
        batch_size: int,
        framer: Framer,
        seed: int = 0,
        pad_id: int = 0,
    ) -> None:
        super().__init__(examples, batch_size, lambda chosen: collate(chosen, framer, pad_id), seed)
