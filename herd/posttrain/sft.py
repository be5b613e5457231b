"""`herd sft CONFIG.toml`: supervised fine-tuning of a checkpoint on conversations.

Llama 2 section 3.1 and Llama 3 section 4.1: the loss is the cross-entropy of the assistant's
tokens only (system, user and tool turns and the headers carry none), and several dialogues are
packed per row with attention kept within each dialogue (herd/posttrain/sft_batches.py). It runs on
the pretraining engine (herd/train/trainer.py): the same run folder, checkpoints, resume, FSDP2,
metrics, stability monitor and plots; only the data differs.

The run config is a `herd train` config whose [model] names the checkpoint to start from
(`checkpoint = FOLDER`), whose tokenizer and chat format are used, and whose [data] path names the
conversations (JSONL, Parquet, a folder of them, or a Hugging Face dataset: a name or a folder
saved by `datasets`, read at `data.split`). Defaults that differ from pretraining follow Llama 3's
SFT: learning rate 1e-5 (Llama 2: 2e-5), cosine decay to 10% after a short warm-up, weight decay
0.1. A share of the conversations (`data.val_fraction`, by a hash of their tokens) is held out:
validation reports the loss and bits per byte of their assistant tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from herd.errors import HerdError
from herd.train.config import RunConfig, load_run_config
from herd.train.training_data import TrainingData

# Overrides of pretraining's defaults (a config file and the command line override these).
SFT_DEFAULTS = {"optim.lr": "1e-5", "optim.warmup_steps": "10"}


def sft_data(run: RunConfig, rank: int = 0) -> TrainingData:
    """The checkpoint's tokenizer and the packed conversations of [data] path."""
    from herd.data.chat_data import load_sft
    from herd.posttrain.sft_batches import SFTBatches

    tokenizer = start_tokenizer(run, "SFT")
    d = run.data
    data = load_sft(
        tokenizer, d.path, d.seq_len, on_long=d.too_long, strict=d.strict, split=d.split
    )
    if rank == 0:
        for problem in data.problems[:5]:
            print(f"skipped {problem}", file=sys.stderr)
        if len(data.problems) > 5:
            print(f"... and {len(data.problems) - 5} more malformed rows", file=sys.stderr)
        c = data.counts
        print(
            f"sft data: {c['kept']} of {c['rows']} conversations kept ({c['malformed']} "
            f"malformed, {c['too_long']} too long for seq_len {d.seq_len} and dropped, "
            f"{c['truncated']} truncated)",
            file=sys.stderr,
        )
    if not data.examples:
        raise HerdError(f"{d.path}: no usable conversation")
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    train, held_out = split_held_out(data.examples, d.val_fraction)
    batches = SFTBatches(train, d.batch_size, d.seq_len, d.seed, pad_id=pad)
    val, why = None, f"data.val_fraction {d.val_fraction} holds out {len(held_out)} conversations"
    try:
        if held_out:
            val = SFTBatches(held_out, d.batch_size, d.seq_len, d.seed, pad_id=pad).sequential
    except HerdError as e:
        why = f"{why}: {e}"
    if rank == 0:
        steps = batches.n_rows / d.batch_size
        print(
            f"sft data: {len(train)} conversations in {batches.n_rows} packed rows of "
            f"{d.seq_len} positions, one epoch = {steps:.1f} micro-batches of {d.batch_size}; "
            + (
                f"validation on {len(held_out)} held-out conversations"
                if val
                else f"no validation ({why})"
            ),
            file=sys.stderr,
        )
    return TrainingData(tokenizer, batches, val)


def split_held_out(examples: list, fraction: float, key=lambda e: e.ids) -> tuple[list, list]:
    """(training, held-out) examples: an example is held out when a hash of its tokens
    (`key(example)`) falls in `fraction`, so the split depends on the data alone (not on order
    or seed)."""
    if not 0.0 <= fraction < 1.0:
        raise HerdError(f"data.val_fraction {fraction}: expected a value in [0, 1)")
    train, held_out = [], []
    for example in examples:
        digest = hashlib.sha256(repr(key(example)).encode()).digest()
        (held_out if int.from_bytes(digest[:8], "big") < fraction * 2**64 else train).append(
            example
        )
    return train, held_out


def start_tokenizer(run: RunConfig, stage: str):
    """The tokenizer of the checkpoint a post-training run starts from (its chat format)."""
    from herd.tokenizer import find_tokenizer, load_tokenizer

    if not run.init_checkpoint:
        raise HerdError(
            "[model] checkpoint is empty: fine-tuning starts from a checkpoint "
            "(set [model] checkpoint = FOLDER or --model.checkpoint FOLDER)"
        )
    if find_tokenizer(Path(run.init_checkpoint)) is None:
        raise HerdError(
            f"{run.init_checkpoint}: has no tokenizer file, which {stage} needs for its chat format"
        )
    if not run.data.path:
        raise HerdError(f"data.path is empty: point it at the {stage} data (JSONL, Parquet, ...)")
    return load_tokenizer(run.init_checkpoint)


def load_sft_config(path: str | None, overrides: dict[str, str]) -> RunConfig:
    """A run config with SFT's defaults under the file and the command line."""
    return load_stage_config(path, overrides, SFT_DEFAULTS)


def load_stage_config(
    path: str | None, overrides: dict[str, str], stage_defaults: dict[str, str]
) -> RunConfig:
    """A run config with a stage's defaults under the file and the command line."""
    return load_run_config(path, overrides, defaults=stage_defaults)


def run_sft(args: argparse.Namespace) -> None:
    """`herd sft CONFIG.toml [--SECTION.FIELD VALUE ...]` or `herd sft --resume RUN_DIR`."""
    from herd.train import distributed
    from herd.train.commands import fit_and_report, run_from_args

    run, run_dir, resume = run_from_args(args, load_sft_config)
    rank, _ = distributed.world()
    fit_and_report(run, run_dir, resume, sft_data(run, rank))
