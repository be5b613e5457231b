"""`herd train CONFIG.toml [--SECTION.FIELD VALUE ...]` and `herd train --resume RUN_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from herd.errors import HerdError


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """["--train.steps", "100", "--optim.lr=1e-3"] -> {"train.steps": "100", "optim.lr": "1e-3"}"""
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or "." not in token:
            raise HerdError(
                f"unexpected argument '{token}' (overrides look like --train.steps 100)"
            )
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise HerdError(f"--{key} needs a value")
            value = tokens[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def run_train(args: argparse.Namespace) -> None:
    from herd.config import load_run_config
    from herd.train.trainer import Trainer

    overrides = parse_overrides(getattr(args, "overrides", []))
    if args.resume:
        run_dir = Path(args.resume)
        config = args.config or run_dir / "config.toml"
        if not Path(config).is_file():
            raise HerdError(f"{run_dir}: no config.toml to resume from")
        run = load_run_config(str(config), overrides)
    else:
        if args.config is None and not overrides:
            raise HerdError("give a CONFIG.toml (see configs/) or --SECTION.FIELD overrides")
        run = load_run_config(args.config, overrides)
        run_dir = Path(run.train.out)
    trainer = Trainer(run, run_dir, resume=bool(args.resume))
    last = trainer.fit()
    parts = [f"step {trainer.step}", f"tokens {trainer.tokens:,}"]
    if "loss" in last:
        parts.append(f"loss {last['loss']:.4f}")
    if "val_bpb" in last:
        parts.append(f"val loss {last['val_loss']:.4f}, val bpb {last['val_bpb']:.4f}")
    if trainer.rank == 0:
        print(f"{run_dir}: " + ", ".join(parts))
