"""`herd train` of a vision adapter: an image encoder and cross-attention layers on a frozen LM.

Llama 3 section 7 adds vision compositionally: a language model, trained first, is frozen; an
image encoder, a projector and gated cross-attention layers are added and trained on image-text
pairs (Llama 3.2 Vision is its released form; herd/model/multimodal.py). A run config asks for it
with `[model] vision = {...}` (herd.model.config.VisionConfig's fields; the encoder defaults to
Llama 3.2 Vision's, and `cross_attention_layers` when not given to one layer before every fourth
text block, as the 11B and 90B models place them) over `[model] checkpoint`, a text model:

- the model is the `VisionLanguageModel` of the checkpoint's config plus `vision`; the text
  weights are the checkpoint's and the new parts are initialised with every gate 0, so at step 0
  the model computes exactly the text model;
- `train.vision_train = "adapter"` (the default) freezes the text model (blocks, embedding,
  norm, output); the encoder, projector, cross-attention layers and the rows past the vocabulary
  (<|image|>'s embedding) train. "full" trains everything. A checkpoint that already has vision
  continues as it is;
- [data] path holds image-text rows (herd/data/image_text.py): captions, conversations with
  image parts, text-only rows, in padded batches; a share is held out (`data.val_fraction`) for
  validation loss and bits per byte on their targets.

Checkpoints are herd folders whose config.json holds the vision config (`herd.load`,
`herd generate --image` read them). With [lora] r > 0 (adapter runs only) the text model's
projections get LoRA adapters as well, while the added parts train whole: the checkpoints hold
the adapters and the added parts (PEFT's modules_to_save) in adapter_model.safetensors, and
`herd.load` builds the vision model on the text checkpoint their adapter_config.json names.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.model.multimodal import ADDED_PARTS
from herd.train.config import RunConfig
from herd.train.training_data import TrainingData

VISION_TRAIN = ("adapter", "full")
# What an adapter run trains: the parts the text model does not have.
ADAPTER_PREFIXES = tuple(f"{part}." for part in ADDED_PARTS)


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
    their targets, with the batch's pictures; validation on the held-out samples."""

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


def is_vision_run(run: RunConfig) -> bool:
    """Whether the run trains a vision model: [model] vision, or a start checkpoint that has
    one. [model] vision without a checkpoint is an error: the adapter needs a language model."""
    if run.model.get("vision") is not None:
        if not run.init_checkpoint:
            raise HerdError(
                "[model] vision needs [model] checkpoint: the language model the adapter is "
                "trained on (set checkpoint = FOLDER or --model.checkpoint FOLDER)"
            )
        return True
    if not run.init_checkpoint:
        return False
    from herd.checkpoint.convert import read_config

    return read_config(run.init_checkpoint).vision is not None


def image_text_data(run: RunConfig, rank: int = 0) -> TrainingData:
    """The start checkpoint's tokenizer and the image-text rows of [data] path, batched."""
    from herd.data.image_text import ImageTextBatches, load_image_text
    from herd.tokenizer import find_tokenizer, load_tokenizer

    if run.train.vision_train not in VISION_TRAIN:
        raise HerdError(f"train.vision_train '{run.train.vision_train}': expected adapter or full")
    if find_tokenizer(Path(run.init_checkpoint)) is None:
        raise HerdError(
            f"{run.init_checkpoint}: has no tokenizer file, which image-text data needs"
        )
    if not run.data.path:
        raise HerdError("data.path is empty: point it at image-text rows (JSONL, Parquet, ...)")
    tokenizer = load_tokenizer(run.init_checkpoint)
    config = run.model_config()
    d = run.data
    data = load_image_text(
        tokenizer,
        d.path,
        d.seq_len,
        config.image_token_id,
        on_long=d.too_long,
        strict=d.strict,
        split=d.split,
    )
    if rank == 0:
        for problem in data.problems[:5]:
            print(f"skipped {problem}", file=sys.stderr)
        if len(data.problems) > 5:
            print(f"... and {len(data.problems) - 5} more malformed rows", file=sys.stderr)
    if not data.examples:
        first = f" (first: {data.problems[0]})" if data.problems else ""
        raise HerdError(f"{d.path}: no usable image-text row{first}")
    train, held_out = split_held_out(data.examples, d.val_fraction)
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    tiler = vision_tiler(config.vision)
    batches = ImageTextBatches(train, d.batch_size, tiler, d.seed, pad_id=pad)
    val = None
    if len(held_out) >= d.batch_size:
        val = ImageTextBatches(held_out, d.batch_size, tiler, d.seed, pad_id=pad).sequential
    if rank == 0:
        c = data.counts
        pictures = sum(len(e.pictures) for e in train)
        print(
            f"image-text data: {c['kept']} of {c['rows']} rows kept ({c['malformed']} malformed, "
            f"{c['too_long']} too long for seq_len {d.seq_len}, {c['truncated']} truncated); "
            f"{len(train)} samples with {pictures} pictures to train on, "
            + (f"{len(held_out)} held out" if val else "no validation"),
            file=sys.stderr,
        )
    token_bytes = torch.as_tensor(tokenizer.token_bytes, dtype=torch.long)
    return TrainingData(tokenizer, batches, None, ImageTextObjective(val, token_bytes))


def split_held_out(examples: list, fraction: float) -> tuple[list, list]:
    """(training, held-out) samples: held out when a hash of its tokens and row (FILE:LINE)
    falls in `fraction`, so the split depends on the data alone, not on order or seed."""
    if not 0.0 <= fraction < 1.0:
        raise HerdError(f"data.val_fraction {fraction}: expected a value in [0, 1)")
    train, held_out = [], []
    for e in examples:
        digest = hashlib.sha256(repr((e.ids, e.source)).encode()).digest()
        share = int.from_bytes(digest[:8], "big") / 2**64
        (held_out if share < fraction else train).append(e)
    return train, held_out


def load_start_weights(model: torch.nn.Module, path: str) -> None:
    """The start checkpoint's weights into `model`: all of them, or, when `model` adds vision
    to a text checkpoint, the text model's (the new parts keep their initialisation)."""
    from herd.checkpoint.convert import read_config
    from herd.checkpoint.loading import load_weights

    adding = model.config.vision is not None and read_config(path).vision is None
    load_weights(model, path, new=ADAPTER_PREFIXES if adding else ())


def freeze_for_vision(model: torch.nn.Module, vision_train: str) -> None:
    """Freeze the text model for an adapter run ("adapter"); "full" trains everything."""
    if vision_train not in VISION_TRAIN:
        raise HerdError(f"train.vision_train '{vision_train}': expected adapter or full")
    if vision_train == "full":
        return
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(ADAPTER_PREFIXES))
