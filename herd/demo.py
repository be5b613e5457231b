"""`herd demo` (what `make demo` runs): the whole pipeline on an embedded corpus, no download.

1. Train a byte-level BPE tokenizer on the running interpreter's standard-library source.
2. Prepare that corpus as token shards (held-out split by document hash).
3. Pretrain the `demo` preset (the llama2.c stories15M shape) for about `minutes` on this machine
   (the step count is set from a timed probe of the same model, so the schedule fits the budget).
4. Report validation bits per byte next to a unigram baseline (the bits per byte of predicting
   every token from its training-set frequency alone), save the loss plots, and complete a few
   Python prompts with the trained model.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np

from herd.checkpoint.convert import load
from herd.data.shards import TokenShards, prepare
from herd.generation import generate
from herd.tokenizer import load_tokenizer
from herd.train.config import load_run_config
from herd.train.trainer import Trainer
from herd.vocab.bpe import train_bpe

PROMPTS = ["def fibonacci(n):", "import os\n\n\ndef ", "class Stack:\n    def "]


def unigram_bpb(data: TokenShards) -> float:
    """Bits per byte of a model that knows only each token's frequency in the training split."""
    vocab = data.manifest["tokenizer"]["vocab_size"]
    counts = np.ones(vocab, dtype=np.float64)  # add-one smoothing: no token is impossible
    for tokens, _ in data.shards("train"):
        counts += np.bincount(np.asarray(tokens), minlength=vocab)[:vocab]
    bits = -np.log2(counts / counts.sum())
    total = sum(float(bits[np.asarray(tokens)].sum()) for tokens, _ in data.shards("val"))
    return total / data.totals("val")["bytes"]


def _steps_for(minutes: float, run_overrides: dict) -> int:
    """How many steps fit in `minutes` on this machine: time a few steps of the same model."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        probe = load_run_config(
            None,
            {
                **run_overrides,
                "train.steps": "6",
                "train.eval_every": "1000",
                "train.checkpoint_every": "1000",
                "train.out": tmp,
            },
        )
        trainer = Trainer(probe, Path(tmp))
        trainer.train_step()  # first step pays one-time costs
        # The median of five: on a shared machine one slow step in a two-step probe cut the
        # schedule by a fifth (329 steps planned where 400 fit).
        times = []
        for _ in range(5):
            start = time.perf_counter()
            trainer.train_step()
            trainer.verdicts.read()  # waits for the device: a step queues its work, no more
            times.append(time.perf_counter() - start)
        per_step = statistics.median(times)
    return max(10, int(minutes * 60 / per_step))


def run_demo(
    out: str | Path = "runs/demo",
    steps: int | None = None,
    vocab_size: int = 4096,
    minutes: float = 3.0,
    max_files: int | None = None,
) -> dict:
    out = Path(out)
    start = time.perf_counter()
    from herd.data.sources import stdlib_files

    files = stdlib_files()[:max_files] if max_files else None
    sources = [str(f) for f in files] if files else ["stdlib"]
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        print(f"[1/4] training a {vocab_size}-token BPE on the standard-library source")
        train_bpe(files or stdlib_files(), vocab_size, tok_dir, overwrite=True)
    print("[2/4] preparing token shards (reruns skip finished shards)")
    prepare(sources, tok_dir, out / "data", val_fraction=0.02 if not files else 0.1)
    data = TokenShards(out / "data")
    baseline = unigram_bpb(data)
    common = {
        "model.preset": "demo",
        "data.path": str(out / "data"),
        "data.seq_len": "256",
        "data.batch_size": "4",
    }
    run_dir = out / "run"
    resume = any((run_dir / "checkpoints").glob("step-*"))
    if resume:
        steps = load_run_config(str(run_dir / "config.toml")).train.steps
    elif steps is None:
        steps = _steps_for(minutes, common)
    print(f"[3/4] pretraining the demo preset for {steps} steps")
    run = load_run_config(
        None,
        {
            **common,
            "train.steps": str(steps),
            "train.eval_every": str(max(steps // 4, 5)),
            "train.eval_batches": "10",
            "train.checkpoint_every": str(max(steps // 3, 1)),
            "train.keep_checkpoints": "1",
            "train.log_every": "10",
            "optim.lr": "2e-3",
            "optim.warmup_steps": str(max(steps // 20, 1)),
            "train.out": str(out / "run"),
        },
    )
    last = Trainer(run, run_dir, resume=resume).fit()
    bpb = last.get("val_bpb", float("nan"))
    print(
        f"\nvalidation: {bpb:.3f} bits/byte (loss {last.get('val_loss', math.nan):.3f}); "
        f"unigram baseline {baseline:.3f} bits/byte; plots in {run_dir / 'plots'}"
    )
    # Sampled (temperature 0.8, top-k 50, fixed seed) rather than greedy: greedy decoding of a
    # model this small falls into loops at once, which hides what it has learned.
    print("[4/4] completions (temperature 0.8, top-k 50, seed 0):")
    checkpoint = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    model = load(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    for prompt in PROMPTS:
        ids = generate(
            model,
            tokenizer.encode(prompt, bos=True),
            64,
            temperature=0.8,
            top_k=50,
            seed=0,
            stop_ids=tokenizer.stop_ids,
        )
        text = tokenizer.decode(ids, skip_special=True)
        print(f"--- {prompt!r}\n{prompt}{text}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return {"val_bpb": bpb, "unigram_bpb": baseline}
