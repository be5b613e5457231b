"""`herd train` of an adapter on a frozen LM: a vision adapter (images) or a speech adapter.

Llama 3 adds modalities compositionally (sections 7 and 8): a language model, trained first, is
frozen; an encoder and the layers that feed it to the language model are added and trained on
paired data. A run config asks for one over `[model] checkpoint`, a text model:

- `[model] vision = {...}` (herd.model.config.VisionConfig's fields; the encoder defaults to Llama
  3.2 Vision's, and `cross_attention_layers` when not given to one layer before every fourth
  text block, as the 11B and 90B models place them): an image encoder, projector and gated
  cross-attention layers (herd/model/multimodal.py), trained on image-text rows
  (herd/data/image_text.py);
- `[model] speech = {...}` (herd.model.speech_config.SpeechConfig's fields; the paper's
  Conformer by default): a speech encoder and adapter whose frames enter as tokens
  (herd/model/speech_model.py), trained on audio-text rows (herd/data/audio_text.py).

The model is the one the checkpoint's config plus the new part describes; the text weights are
the checkpoint's and the new parts keep their initialisation (a vision model's gates at 0, so at
step 0 it computes exactly the text model). `train.vision_train = "adapter"` (the default, for
either kind) freezes the text model (blocks, embedding, norm, output); the added parts
(`added_parts`) train. "full" trains everything. A checkpoint that already has the part
continues as it is. A share of the rows is held out (`data.val_fraction`) for validation loss
and bits per byte on their targets; samples are padded into batches, not packed.

Checkpoints are herd folders whose config.json holds the added part (`herd.load`, `herd
generate --image/--audio` read them). With [lora] r > 0 (adapter runs only) the text model's
projections get LoRA adapters as well, while the added parts train whole: the checkpoints hold
the adapters and the added parts (PEFT's modules_to_save) in adapter_model.safetensors, and
`herd.load` builds the full model on the text checkpoint their adapter_config.json names.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.model.config import ModelConfig
from herd.model.families import added_parts
from herd.train.config import RunConfig
from herd.train.training_data import TrainingData

VISION_TRAIN = ("adapter", "full")


def vision_tiler(vision):
    """The data module's tiler: a picture (file or RGB image) -> (tiles, aspect-ratio id)."""
    from herd.model.image_processing import ImageProcessor

    processor = ImageProcessor(vision)

    def tiler(picture, name: str):
        tiles, layout = processor.tiles(picture, name)
        return tiles, processor.layouts.index(layout) + 1

    return tiler


class ImageTextObjective:
    """The loss of image-text batches (the trainer's `objective`): the summed cross-entropy of
    their targets, with the batch's pictures; validation on the held-out samples (by
    `loss_sum`, which the audio-text objective replaces)."""

    def __init__(self, val_batches, token_bytes: torch.Tensor) -> None:
        self.val_batches, self.token_bytes = val_batches, token_bytes

    def prepare(self, model, rank: int, device, fresh: bool) -> None:
        pass

    @staticmethod
    def loss_sum(model, micro, reduction: str = "sum") -> torch.Tensor:
        from herd.model.multimodal import Images

        images = None
        if micro.pixels is not None:
            images = Images(micro.pixels, micro.aspect_ratio_ids)
        return model(micro.inputs, targets=micro.targets, images=images, reduction=reduction)

    def read_metrics(self) -> dict:
        return {}

    @torch.no_grad()
    def validate(self, model, max_batches, rows, device, autocast) -> dict | None:
        from herd.train import distributed
        from herd.train.validation import loss_sums

        if self.val_batches is None:
            return None
        was_training = model.training
        model.eval()
        token_bytes = self.token_bytes.to(device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        for batch in self.val_batches(max_batches, rows):
            batch = batch.to(device)
            with autocast():
                nll = self.loss_sum(model, batch, reduction="none")
            sums += loss_sums(nll, batch.targets, token_bytes)
        model.train(was_training)
        nats, count, nbytes = distributed.all_reduce_sum(sums.tolist(), device)
        if count == 0:
            return None
        return {"val_loss": nats / count, "val_bpb": nats / math.log(2) / max(nbytes, 1)}


class VideoTextObjective(ImageTextObjective):
    """The loss of video-text batches: the summed cross-entropy of their targets, with the
    batch's clips' frames."""

    @staticmethod
    def loss_sum(model, micro, reduction: str = "sum") -> torch.Tensor:
        from herd.model.video_model import Videos

        videos = None if micro.frames is None else Videos(micro.frames, micro.counts)
        return model(micro.inputs, targets=micro.targets, videos=videos, reduction=reduction)


class AudioTextObjective(ImageTextObjective):
    """The loss of audio-text batches: the summed cross-entropy of their targets, with the
    batch's clips' log-mel frames."""

    @staticmethod
    def loss_sum(model, micro, reduction: str = "sum") -> torch.Tensor:
        from herd.model.speech_model import Audio

        audio = None if micro.features is None else Audio(micro.features, micro.lengths)
        return model(micro.inputs, targets=micro.targets, audio=audio, reduction=reduction)


def is_adapter_run(run: RunConfig) -> bool:
    """Whether the run trains a vision or speech model: [model] vision or speech, or a start
    checkpoint that has one. Either without a checkpoint is an error: an adapter needs a
    language model."""
    for part in ("vision", "video", "speech"):
        if run.model.get(part) is not None:
            if not run.init_checkpoint:
                raise HerdError(
                    f"[model] {part} needs [model] checkpoint: the language model the adapter "
                    "is trained on (set checkpoint = FOLDER or --model.checkpoint FOLDER)"
                )
            return True
    if not run.init_checkpoint:
        return False
    from herd.checkpoint.convert import read_config

    return bool(added_parts(read_config(run.init_checkpoint)))


def adapter_data(run: RunConfig, rank: int = 0) -> TrainingData:
    """The start checkpoint's tokenizer and [data] path's rows, batched: image-text for a vision
    model, audio-text for a speech model (each sample one padded batch row)."""
    from herd.tokenizer import find_tokenizer, load_tokenizer

    if run.train.vision_train not in VISION_TRAIN:
        raise HerdError(f"train.vision_train '{run.train.vision_train}': expected adapter or full")
    config, d = run.model_config(), run.data
    kind, media = ("audio-text", "clips") if config.speech else ("image-text", "pictures")
    if config.video is not None:
        kind, media = "video-text", "videos"
    if find_tokenizer(Path(run.init_checkpoint)) is None:
        raise HerdError(f"{run.init_checkpoint}: has no tokenizer file, which {kind} data needs")
    if not d.path:
        raise HerdError(f"data.path is empty: point it at {kind} rows (JSONL, Parquet, ...)")
    tokenizer = load_tokenizer(run.init_checkpoint)
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    if config.speech is not None:
        from herd.data.audio_text import AudioTextBatches, load_audio_text
        from herd.model.speech_model import speech_prompt

        data = load_audio_text(tokenizer, d.path, d.seq_len, lambda n: speech_prompt(config, n),
                               on_long=d.too_long, strict=d.strict, split=d.split)  # fmt: skip

        def batches(examples):
            return AudioTextBatches(examples, d.batch_size, d.seed, pad_id=pad)

        objective = AudioTextObjective
    elif config.video is not None:
        from herd.data.video_text import VideoTextBatches, load_video_text
        from herd.model.image_processing import video_frames

        data = load_video_text(tokenizer, d.path, d.seq_len, config.video_token_id,
                               on_long=d.too_long, strict=d.strict, split=d.split)  # fmt: skip

        def framer(clip: Path, name: str) -> torch.Tensor:
            from herd.data.video import read_frames

            return video_frames(
                read_frames(clip, config.video.max_frames, name), config.vision, name
            )

        def batches(examples):
            return VideoTextBatches(examples, d.batch_size, framer, d.seed, pad_id=pad)

        objective = VideoTextObjective
    else:
        from herd.data.image_text import ImageTextBatches, load_image_text

        data = load_image_text(tokenizer, d.path, d.seq_len, config.image_token_id,
                               on_long=d.too_long, strict=d.strict, split=d.split)  # fmt: skip
        tiler = vision_tiler(config.vision)

        def batches(examples):
            return ImageTextBatches(examples, d.batch_size, tiler, d.seed, pad_id=pad)

        objective = ImageTextObjective
    if rank == 0:
        for problem in data.problems[:5]:
            print(f"skipped {problem}", file=sys.stderr)
        if len(data.problems) > 5:
            print(f"... and {len(data.problems) - 5} more malformed rows", file=sys.stderr)
    if not data.examples:
        first = f" (first: {data.problems[0]})" if data.problems else ""
        raise HerdError(f"{d.path}: no usable {kind} row{first}")
    train, held_out = split_held_out(data.examples, d.val_fraction)
    val = batches(held_out).sequential if len(held_out) >= d.batch_size else None
    if rank == 0:
        c = data.counts
        count = sum(len(getattr(e, media)) for e in train)
        print(
            f"{kind} data: {c['kept']} of {c['rows']} rows kept ({c['malformed']} malformed, "
            f"{c['too_long']} too long for seq_len {d.seq_len}, {c['truncated']} truncated); "
            f"{len(train)} samples with {count} {media} to train on, "
            + (f"{len(held_out)} held out" if val else "no validation"),
            file=sys.stderr,
        )
    token_bytes = torch.as_tensor(tokenizer.token_bytes, dtype=torch.long)
    return TrainingData(tokenizer, batches(train), None, objective(val, token_bytes))


def split_held_out(examples: list, fraction: float) -> tuple[list, list]:
    """(training, held-out) samples: held out when a hash of its tokens and row (the file's
    name and the line) falls in `fraction`, so the split depends on the data alone, not on
    order, seed or the folder the data sits in."""
    if not 0.0 <= fraction < 1.0:
        raise HerdError(f"data.val_fraction {fraction}: expected a value in [0, 1)")
    train, held_out = [], []
    for e in examples:
        row = Path(e.source).name  # FILE:LINE without the folders
        digest = hashlib.sha256(repr((e.ids, row)).encode()).digest()
        share = int.from_bytes(digest[:8], "big") / 2**64
        (held_out if share < fraction else train).append(e)
    return train, held_out


def load_start_weights(model: torch.nn.Module, path: str) -> None:
    """The start checkpoint's weights into `model`: all of them, or, when `model` adds vision or
    speech to a text checkpoint, the text model's (the new parts keep their initialisation)."""
    from herd.checkpoint.convert import read_config
    from herd.checkpoint.loading import load_weights

    have = added_parts(read_config(path))
    new = tuple(f"{part}." for part in added_parts(model.config) if part not in have)
    load_weights(model, path, new=new)


def trained_parts(config: ModelConfig, start: ModelConfig) -> tuple[str, ...]:
    """The parts an adapter run trains: those the start checkpoint (`start`) lacks, or, when it
    has them all, the model's own adapter: a video model's video parts (Llama 3 section 7.4
    trains the aggregator and video cross-attention on a trained vision model, whose image
    encoder and image layers stay as they are), any other model's added parts."""
    parts = added_parts(config)
    have = added_parts(start)
    new = tuple(part for part in parts if part not in have)
    if new:
        return new
    if config.video is not None:
        from herd.model.video_model import ADDED_PARTS as VIDEO_PARTS

        return VIDEO_PARTS
    return parts


def freeze_for_adapter(model: torch.nn.Module, vision_train: str, start: ModelConfig) -> None:
    """Freeze all but `trained_parts` for an adapter run ("adapter") on a start checkpoint of
    config `start`; "full" trains everything."""
    if vision_train not in VISION_TRAIN:
        raise HerdError(f"train.vision_train '{vision_train}': expected adapter or full")
    if vision_train == "full":
        return
    prefixes = tuple(f"{part}." for part in trained_parts(model.config, start))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
