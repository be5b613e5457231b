"""What to train on: `DataConfig`, the [data] section of a run config.

It lives with the data pipeline that reads it (packing, objectives, the step loader), so data/
needs nothing from train/; the run config (`herd.train.config.RunConfig`) embeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """What to train on."""

    path: str = field(default="", metadata={"help": "folder written by `herd data prepare`"})
    seq_len: int = field(default=256, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(
        default=8, metadata={"help": "sequences per micro-batch, summed over all processes"}
    )
    objective: str = field(
        default="nxtuni", metadata={"help": "nxtuni, nxtpre, mskuni or mskbi (Artetxe et al.)"}
    )
    document_mask: bool = field(
        default=True, metadata={"help": "attend within documents only (Llama 3); else causal"}
    )
    n_spans: int = field(default=1, metadata={"help": "masked spans per document (mskuni, mskbi)"})
    mask_fraction: float = field(
        default=0.15,
        metadata={"help": "share of each document's tokens masked, over all its spans (msk*)"},
    )
    end_marker: bool = field(
        default=True,
        metadata={
            "help": "close the last span with a sentinel so an infilling model learns to stop "
            "(msk*)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the window order and objectives"})
    too_long: str = field(
        default="drop",
        metadata={
            "help": "sft: a dialogue longer than seq_len is dropped, or truncated (kept to "
            "seq_len tokens if an assistant token remains); either way counted"
        },
    )
    val_fraction: float = field(
        default=0.05,
        metadata={
            "help": "sft, dpo: share of the conversations (pairs) held out for validation, chosen "
            "by a hash of their tokens (pretraining's split is set by `herd data prepare`)"
        },
    )
    split: str = field(
        default="train",
        metadata={
            "help": "sft, dpo: the split to read of a Hugging Face dataset (a name, or a folder saved "
            "by `datasets`)"
        },
    )
    strict: bool = field(
        default=False,
        metadata={"help": "sft, dpo: a malformed row is fatal (default: reported and skipped)"},
    )
