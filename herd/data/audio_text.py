"""Audio-text training data for a speech adapter (Llama 3 section 8).

Rows (JSONL, Parquet, folders of them, or a Hugging Face dataset, read as SFT's are), each one
training sample, padded (not packed) into a batch row:

    {"audio": CLIP or [CLIP, ...], "text": "what is said"}
        ids: each clip's speech tokens (<|speech_start|>, a <|speech|> per adapter frame,
        <|speech_end|>), then BOS, the text, EOS; loss on the text and its EOS (recognition,
        as the paper's "Repeat after me" prompts; put an instruction in "messages" for others).
    {"text": "plain text"}
        a text-only sample.
    {"messages": [...]}
        a conversation in the Llama 3 chat format, targets on the assistant's turns; a user
        turn's content may hold OpenAI parts {"type": "input_audio", "input_audio": {"data":
        BASE64, "format": "wav"}} or {"type": "audio", "path": CLIP}, each clip's speech tokens
        where its part stands (herd.tokenizer.chat.encode_pictured_dialog).

A CLIP is a file path (relative to the data file) or a Hugging Face Audio value {"bytes": ...,
"path": ...}. Its length is read from the file's header when rows are read (soundfile), so the
number of <|speech|> tokens is known then; the samples are decoded, resampled to 16 kHz and turned
into log-mel frames (herd/data/audio.py) when a batch is built. Problems are one line naming
FILE:LINE and the field ("audio 2", "messages[0].content[1]").
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from herd.data.audio import SAMPLE_RATE, log_mel, read_audio
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

SpeechIds = Callable[[int], list[int]]  # samples at 16 kHz -> the ids that show the clip


@dataclass(frozen=True)
class Clip:
    source: Path | bytes
    samples: int  # at 16 kHz, as read_audio will return them


@dataclass
class AudioTextExample:
    ids: list[int]
    mask: list[int]  # 1 where the token is a target
    clips: list[Clip]  # in the order they stand
    source: str  # FILE:LINE


def clip_of(value: object, base: Path | None, what: str) -> Clip:
    """A row's CLIP checked by its header: its source and its length at 16 kHz."""
    import soundfile

    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # HF Audio feature
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        source, opened = bytes(value), io.BytesIO(bytes(value))
    elif isinstance(value, str) and value.strip():
        path = Path(value.removeprefix("file://"))
        source = opened = path if path.is_absolute() or base is None else base / path
        if not source.is_file():
            raise ValueError(f"{what}: {source}: no such audio file")
    else:
        raise ValueError(f"{what}: expected an audio file path or audio bytes")
    try:
        info = soundfile.info(opened)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, OSError):
        raise ValueError(f"{what}: not an audio file soundfile can read") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError(f"{what}: an empty clip")
    ratio = Fraction(SAMPLE_RATE, info.samplerate)  # resample_poly's output length
    return Clip(source, math.ceil(info.frames * ratio.numerator / ratio.denominator))


def _clips_of(row: dict, base: Path | None) -> list[Clip]:
    value = row.get("audio")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [clip_of(v, base, f"audio {i + 1}") for i, v in enumerate(items)]


def _part_clip(part: dict, base: Path | None, what: str) -> Clip:
    if part.get("type") == "input_audio":
        data = part.get("input_audio")
        data = data.get("data") if isinstance(data, dict) else None
        if not isinstance(data, str):
            raise ValueError(f'{what}: expected "input_audio": {{"data": BASE64, "format": ...}}')
        try:
            return clip_of(base64.b64decode(data, validate=True), base, what)
        except binascii.Error:
            raise ValueError(f"{what}: input_audio data is not valid base64") from None
    return clip_of(part.get("path") or part.get("audio"), base, what)


def _chat(tok, messages: object, base: Path | None, speech_ids: SpeechIds):
    plain, pieces = split_media_parts(
        messages, ("input_audio", "audio"), lambda part, what: _part_clip(part, base, what), "audio"
    )
    return encode_media_chat(tok, plain, pieces, lambda clip: speech_ids(clip.samples), "audio")


def encode_row(tok, row: object, where: str, speech_ids: SpeechIds) -> AudioTextExample:
    """One row as an example; ValueError naming the field that is wrong."""
    if isinstance(row, Exception):
        raise ValueError(str(row))
    if not isinstance(row, dict):
        raise ValueError("expected an object with 'text' or 'messages'")
    base = row_folder(where)
    try:
        if row.get("messages") is not None:
            return AudioTextExample(*_chat(tok, row["messages"], base, speech_ids), where)
        clips = _clips_of(row, base)
        lead = [i for clip in clips for i in speech_ids(clip.samples)]
        return AudioTextExample(*encode_caption(tok, lead, row.get("text")), clips, where)
    except HerdError as e:  # a clip too short for one speech frame
        raise ValueError(str(e)) from None


def load_audio_text(
    tok,
    sources: str | Path | list,
    seq_len: int,
    speech_ids: SpeechIds,
    on_long: str = "drop",
    strict: bool = False,
    split: str = "train",
) -> ChatData:
    """Examples of `sources` that fit `seq_len` positions; longer ones dropped (a clip cannot be
    cut: `on_long="truncate"` is refused). Malformed rows are skipped and reported, or fatal
    with `strict`."""
    if on_long != "drop":
        raise HerdError(f"data.too_long {on_long!r}: audio-text samples can only be dropped")

    def encode(row, where: str) -> AudioTextExample:
        return encode_row(tok, row, where, speech_ids)

    return load_examples(sources, split, encode, seq_len, on_long, strict)


@dataclass
class AudioTextBatch:
    """A padded micro-batch: tokens and targets [B, T]; with clips, their log-mel features
    [B, N, frames, n_mels] and lengths [B, N] (0: an empty slot), else both None."""

    inputs: torch.Tensor
    targets: torch.Tensor
    features: torch.Tensor | None = None
    lengths: torch.Tensor | None = None

    def map(self, fn) -> AudioTextBatch:
        parts = (self.inputs, self.targets, self.features, self.lengths)
        return AudioTextBatch(*(None if t is None else fn(t) for t in parts))

    def to(self, device: torch.device, non_blocking: bool = False) -> AudioTextBatch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def loss_count(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def clip_features(clip: Clip, name: str) -> torch.Tensor:
    """The clip's log-mel frames [samples // 160, n_mels], exactly as many as its speech tokens
    were counted for when the row was read."""
    wave = read_audio(clip.source, name)
    frames = clip.samples // 160
    features = log_mel(wave[: clip.samples])
    if features.shape[0] < frames:  # a decoder that gave a sample or two fewer than the header
        features = torch.cat([features, features[-1:].expand(frames - features.shape[0], -1)])
    return features[:frames]


def collate(examples: Sequence[AudioTextExample], pad_id: int = 0) -> AudioTextBatch:
    """Examples as one batch: inputs ids[:-1], targets ids[1:] where the mask is 1, right-padded;
    clips decoded into log-mel frames and padded to the most per row and the longest."""
    inputs, targets = padded_tokens(examples, pad_id)
    rows = [
        [clip_features(c, f"{e.source}: audio {i + 1}") for i, c in enumerate(e.clips)]
        for e in examples
    ]
    if not any(rows):
        return AudioTextBatch(inputs, targets)
    return AudioTextBatch(inputs, targets, *pad_clips(rows))


def pad_clips(rows: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [B, N, frames, n_mels], lengths [B, N]) of each row's clips' log-mel frames,
    padded to the most clips per row and the longest clip (an empty slot has length 0)."""
    N = max(len(r) for r in rows)
    frames = max(f.shape[0] for r in rows for f in r)
    n_mels = next(f for r in rows for f in r).shape[1]
    features = torch.zeros(len(rows), N, frames, n_mels)
    lengths = torch.zeros(len(rows), N, dtype=torch.long)
    for b, row in enumerate(rows):
        for n, f in enumerate(row):
            features[b, n, : f.shape[0]] = f
            lengths[b, n] = f.shape[0]
    return features, lengths


class AudioTextBatches(PaddedBatches):
    """Audio-text micro-batches of `batch_size` samples (herd/data/padded_batches.py)."""

    def __init__(
        self, examples: Sequence[AudioTextExample], batch_size: int, seed: int = 0, pad_id: int = 0
    ) -> None:
        super().__init__(examples, batch_size, lambda chosen: collate(chosen, pad_id), seed)
