"""`herd train CONFIG.toml [--SECTION.FIELD VALUE ...]` and `herd train --resume RUN_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from herd.errors import HerdError


def run_train(args: argparse.Namespace) -> None:
    fit_and_report(*run_from_args(args))


def run_from_args(args: argparse.Namespace, load_config=None) -> tuple:
    """(run config, run folder, resuming?) of `herd train|sft|dpo CONFIG.toml [overrides]` or
    `--resume RUN_DIR`. A new run's config comes from `load_config(path, overrides)` (a stage's
    defaults under the file); a resumed run's from its config.toml, already resolved."""
    from herd.train.config import load_run_config

    overrides = getattr(args, "overrides", {})
    if args.resume:
        run_dir = Path(args.resume)
        config = args.config or run_dir / "config.toml"
        if not Path(config).is_file():
            raise HerdError(f"{run_dir}: no config.toml to resume from")
        return load_run_config(str(config), overrides), run_dir, True
    if args.config is None and not overrides:
        raise HerdError("give a CONFIG.toml (examples in configs/) or --SECTION.FIELD overrides")
    run = (load_config or load_run_config)(args.config, overrides)
    return run, Path(run.train.out), False


def fit_and_report(run, run_dir: Path, resume: bool, data=None) -> None:
    """Train `run` in `run_dir` (on `data`, default pretraining's shards) and print where it
    ended: the one loop behind `herd train`, `herd sft` and the later post-training stages."""
    from herd.train.trainer import Trainer

    trainer = Trainer(run, run_dir, resume=resume, data=data)
    last = trainer.fit()
    parts = [f"step {trainer.step}", f"tokens {trainer.tokens:,}"]
    if "loss" in last:
        parts.append(f"loss {last['loss']:.4f}")
    if "val_bpb" in last:
        parts.append(f"val loss {last['val_loss']:.4f}, val bpb {last['val_bpb']:.4f}")
    if trainer.rank == 0:
        print(f"{run_dir}: " + ", ".join(parts))
