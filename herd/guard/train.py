"""`herd guard train CONFIG.toml`: fine-tune a checkpoint into a guard, through the SFT path.

The config is a `herd sft` config whose [data] path names labelled conversations
(herd/guard/data.py) instead of chat conversations, plus a [guard] section: the policy to train
on and Llama Guard's category-dropping augmentation (`guard.drop_other`, `guard.drop_violated`,
`guard.copies`). Each labelled row becomes an SFT conversation (the guard prompt as the user
turn, the answer in the released format as the assistant's), so the loss falls on the answer
only, as in Llama Guard's fine-tuning. The conversations are written to RUN/guard_sft.jsonl for
inspection and regenerated identically (seeded by data.seed) when the run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from herd.errors import HerdError

# SFT's defaults (herd/posttrain/sft.py); a guard is an SFT run on its own data.
GUARD_DEFAULTS = {"optim.lr": "1e-5", "optim.warmup_steps": "10"}


def load_guard_config(path: str | None, overrides: dict[str, str]):
    from herd.posttrain.sft import load_stage_config

    return load_stage_config(path, overrides, GUARD_DEFAULTS)


def guard_conversations(run) -> list[dict]:
    """The SFT conversations of the run's labelled rows under its [guard] settings."""
    from herd.guard.data import read_labelled, training_conversations
    from herd.guard.policy import default_policy, load_policy

    if not run.data.path:
        raise HerdError("data.path is empty: point it at labelled conversations (JSONL, ...)")
    g = run.guard
    policy = load_policy(g.policy) if g.policy else default_policy()
    rows = read_labelled(run.data.path, run.data.split)
    return training_conversations(
        rows, policy, g.drop_other, g.drop_violated, g.copies, run.data.seed
    )


def run_guard_train(args: argparse.Namespace) -> None:
    from herd.atomic_files import write_file_atomically
    from herd.posttrain.sft import sft_data
    from herd.train import distributed
    from herd.train.commands import fit_and_report, run_from_args

    run, run_dir, resume = run_from_args(args, load_guard_config)
    rank, _ = distributed.world()
    body = "".join(json.dumps(c) + "\n" for c in guard_conversations(run)).encode()
    if rank == 0:
        write_file_atomically(run_dir / "guard_sft.jsonl", lambda f: f.write(body))
    # Every process reads its own copy: no process waits for another's file.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "guard_sft.jsonl"
        path.write_bytes(body)
        converted = dataclasses.replace(run, data=dataclasses.replace(run.data, path=str(path)))
        data = sft_data(converted, rank)
    # The run folder's config.toml keeps the labelled rows' path: a resume converts them again.
    fit_and_report(run, run_dir, resume, data)
