"""Artetxe et al. 2022 at toy scale: does bidirectionality trade next-token loss for infilling?

"On the Role of Bidirectionality in Language Model Pre-Training" (Artetxe et al. 2022) separates
bidirectional context (masked spans are moved to the end, so they are predicted from both sides)
from bidirectional attention (a leading region attends both ways), giving four objectives
(herd/data/objectives.py): nxtuni, nxtpre, mskuni, mskbi. Its headline trade-off: bidirectional
context helps infilling and hurts next-token prediction. This script trains the four objectives at
equal compute on the embedded corpus (the interpreter's standard-library source) and measures both
sides of that trade-off on held-out documents.

    .venv/bin/python experiments/bidirectionality.py              # 28 min on 2 shared CPU cores
    .venv/bin/python experiments/bidirectionality.py --quick      # seconds: a smoke test

Steps:
1. A byte-level BPE tokenizer on the standard library and its token shards (hash-based held-out
   split), both reused from --out when present.
2. One run per objective under OUT/<objective>/: the same model, steps, batch, sequence length,
   learning rate and seeds, so every run processes the same number of tokens at the same FLOPs per
   token (equal compute, as the paper compares its objectives). A finished run is reused, an
   interrupted one resumed.
3. Evaluation on the held-out split:
   - next-token loss and bits per byte: the trainer's validation (plain causal attention within
     documents, every token predicted, no bidirectional prefix), identical for all four models;
   - infilling: fixed-length pieces of held-out documents, one span each masked by the training
     rule (`sample_spans`: 15% of the piece's inner tokens), the same pieces and spans for every
     model. The prompt is the training format (`infill_prompt`: the span replaced by <|mask_0|>,
     then <|mask_0|> again at the end), and the model is scored teacher-forced on the span's
     tokens in one forward pass; models trained with bidirectional attention (nxtpre, mskbi) see
     the prompt's context both ways, as in training.
     Per-token accuracy is the share of span tokens that are the argmax; exact match is the share
     of spans whose every token is, which is exactly the share that greedy decoding of len(span)
     tokens reproduces (greedy feeds back its argmax, so it stays on the teacher-forced path until
     the first miss; the test checks this with `greedy_fill`, herd's own KV-cache generator with
     the context attending both ways in the prefill, as `herd generate --infill` runs it).
   - a prefix-only baseline for the same spans: the model continues the text before the span
     (what a next-token model can do without the sentinel format it never saw), the text before
     the span attending both ways for the bidirectional-attention models.
4. A table on stdout, OUT/results.json, OUT/summary.md and OUT/bidirectionality.png, and one line
   that says whether the trade-off shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# On a CPU shared with other jobs, OpenMP workers that spin while waiting made 2-thread training
# steps 3x slower than 1-thread ones here (bench/generate.py saw the same in decoding); passive
# waiting keeps 2 threads at least as fast as 1. Set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

# The experiment's other parts, beside this script (its folder is on sys.path when it runs).
from bidirectionality_infill import evaluate_infilling, greedy_fill, infill_pieces, sentinel_example
from bidirectionality_report import plot, sample, table, verdict, verdict_lines
from study_cli import parse_study, study_parser

from herd.data.objectives import OBJECTIVES
from herd.data.shards import TokenShards, prepare
from herd.data.sources import stdlib_files
from herd.errors import HerdError
from herd.train.checkpoint import list_checkpoints
from herd.train.config import RunConfig, dump_toml, load_run_config
from herd.train.plots import read_metrics
from herd.train.trainer import Trainer
from herd.vocab.bpe import train_bpe

# The sizes --quick substitutes: a model and corpus small enough for a test that finishes in well
# under a minute on two cores; the numbers it gives mean nothing.
QUICK = {
    "vocab_size": 512,
    "max_files": 40,
    "val_fraction": 0.3,
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "ffn_dim": 128,
    "seq_len": 64,
    "batch_size": 4,
    "steps": 12,
    "warmup_steps": 2,
    "eval_batches": 2,
    "infill_len": 32,
    "infill_examples": 16,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = study_parser(__doc__, "runs/bidirectionality")
    p.add_argument(
        "--objectives",
        nargs="+",
        default=list(OBJECTIVES),
        choices=list(OBJECTIVES),
        help="objectives to train and compare (the verdict needs all four)",
    )
    corpus = p.add_argument_group("corpus")
    corpus.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    corpus.add_argument(
        "--max-files",
        type=int,
        default=0,
        help="use only the first N standard-library files (0: all of them)",
    )
    corpus.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share of documents held out (by hash of their path) for validation and infilling",
    )
    model = p.add_argument_group("model (a Llama-shaped decoder, tied embeddings)")
    model.add_argument("--dim", type=int, default=256, help="residual width")
    model.add_argument("--n-layers", type=int, default=4, help="Transformer blocks")
    model.add_argument("--n-heads", type=int, default=4, help="attention heads (no GQA)")
    model.add_argument("--ffn-dim", type=int, default=688, help="SwiGLU hidden width")
    train = p.add_argument_group("training (identical for every objective)")
    train.add_argument("--steps", type=int, default=400, help="optimizer steps per objective")
    train.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    train.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    train.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    train.add_argument("--warmup-steps", type=int, default=20, help="linear warm-up steps")
    train.add_argument("--seed", type=int, default=0, help="seed of init, data order, objectives")
    train.add_argument(
        "--eval-batches",
        type=int,
        default=20,
        help="validation batches of the next-token loss (each batch-size x seq-len tokens)",
    )
    evaluation = p.add_argument_group("infilling evaluation")
    evaluation.add_argument(
        "--infill-len",
        type=int,
        default=64,
        help="tokens per held-out piece; its one span is 15%% of the inner tokens (9 of 64)",
    )
    evaluation.add_argument(
        "--infill-examples", type=int, default=500, help="held-out pieces to infill"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parse_study(
        p,
        argv,
        QUICK,
        "tiny model, corpus subset and few steps: a smoke test (overrides the sizes above)",
    )
    if args.infill_len + 2 > args.seq_len:
        p.error(f"--infill-len {args.infill_len} + 2 must fit --seq-len {args.seq_len}")
    return args


# --- 1. corpus ---------------------------------------------------------------------------------


def prepare_corpus(args: argparse.Namespace, out: Path) -> TokenShards:
    """Tokenizer and shards under `out`, reused when they were made with the same settings."""
    settings = {
        "vocab_size": args.vocab_size,
        "max_files": args.max_files,
        "val_fraction": args.val_fraction,
    }
    record = out / "corpus.json"
    if record.exists() and json.loads(record.read_text()) != settings:
        raise HerdError(
            f"{out}: holds a corpus made with {record.read_text().strip()}; "
            f"use another --out for {json.dumps(settings)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings) + "\n")
    files = stdlib_files()
    sources = ["stdlib"] if args.max_files <= 0 else [str(f) for f in files[: args.max_files]]
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        print(f"training a {args.vocab_size}-token BPE tokenizer on the standard library")
        chosen = files if args.max_files <= 0 else files[: args.max_files]
        train_bpe(chosen, args.vocab_size, tok_dir, overwrite=True, show_progress=not args.quiet)
    # prepare() skips shards that are already there and intact.
    prepare(
        sources, tok_dir, out / "data", val_fraction=args.val_fraction, show_progress=not args.quiet
    )
    return TokenShards(out / "data")


# --- 2. training -------------------------------------------------------------------------------


def run_config(args: argparse.Namespace, objective: str, data: Path, run_dir: Path) -> RunConfig:
    """The one config all four runs share, but for data.objective."""
    return load_run_config(
        None,
        {
            "model.preset": "demo",
            "model.dim": str(args.dim),
            "model.n_layers": str(args.n_layers),
            "model.n_heads": str(args.n_heads),
            "model.n_kv_heads": str(args.n_heads),
            "model.ffn_dim": str(args.ffn_dim),
            "model.max_seq_len": str(args.seq_len),
            "data.path": str(data),
            "data.objective": objective,
            "data.seq_len": str(args.seq_len),
            "data.batch_size": str(args.batch_size),
            "data.seed": str(args.seed),
            "train.seed": str(args.seed),
            "train.steps": str(args.steps),
            "train.device": "cpu",
            "train.dtype": "float32",
            "train.log_every": str(max(1, min(10, args.steps // 10))),
            # four validation points: the learning curves in the plot, at little cost
            "train.eval_every": str(max(1, args.steps // 4)),
            "train.eval_batches": str(args.eval_batches),
            "train.checkpoint_every": str(max(1, args.steps // 2)),
            "train.keep_checkpoints": "1",
            "optim.lr": str(args.lr),
            "optim.warmup_steps": str(args.warmup_steps),
            "train.out": str(run_dir),
        },
    )


def train_objective(args: argparse.Namespace, objective: str, out: Path) -> dict:
    """Train one objective (or reuse / resume its run); the final metrics and checkpoint path."""
    run_dir = out / objective
    run = run_config(args, objective, out / "data", run_dir)
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    final = run_dir / "checkpoints" / f"step-{args.steps:08d}"
    config_file = run_dir / "config.toml"
    if checkpoints and (not config_file.exists() or config_file.read_text() != dump_toml(run)):
        raise HerdError(
            f"{run_dir}: holds a run with other settings; delete it or use another --out"
        )
    timing = run_dir / "train_seconds.json"  # wall time of the (last) training session
    if final in checkpoints:
        print(f"{objective}: reusing the finished run in {run_dir}")
    else:
        verb = "resuming" if checkpoints else "training"
        print(f"{objective}: {verb} for {args.steps} steps in {run_dir}")
        start = time.perf_counter()
        Trainer(run, run_dir, resume=bool(checkpoints)).fit(show_progress=not args.quiet)
        timing.write_text(json.dumps(time.perf_counter() - start) + "\n")
    seconds = json.loads(timing.read_text()) if timing.exists() else None
    rows = read_metrics(run_dir)
    last = [r for r in rows if r["step"] == args.steps]
    val = [r for r in last if "val_loss" in r]
    if not val:
        raise HerdError(f"{run_dir}: no validation at step {args.steps} (is the val split empty?)")
    curve = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    return {
        "checkpoint": str(final),
        "tokens": max(r["tokens"] for r in last),
        "val_loss": val[-1]["val_loss"],
        "val_bpb": val[-1]["val_bpb"],
        "val_curve": curve,
        "train_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = prepare_corpus(args, out)
    tokenizer = data.tokenizer()
    sentinels = [tokenizer.token_id(f"<|mask_{k}|>") for k in range(4)]
    if any(s is None for s in sentinels):
        raise HerdError("the tokenizer has no <|mask_k|> sentinel tokens")
    pieces = infill_pieces(data, args.infill_len, args.infill_examples, args.seed)
    span_len = pieces[0][1][1] - pieces[0][1][0]
    print(
        f"infilling: {len(pieces)} held-out pieces of {args.infill_len} tokens, spans of "
        f"{span_len} tokens"
    )
    results, fills = {}, {}
    for objective in args.objectives:
        trained = train_objective(args, objective, out)
        model, scores = evaluate_infilling(trained["checkpoint"], objective, pieces, sentinels)
        results[objective] = {**trained, **scores}
        seq, first, region = sentinel_example(*pieces[0], sentinels)
        fills[objective] = greedy_fill(
            model, seq[:first], len(seq) - first, region, OBJECTIVES[objective][1]
        )
        print(
            f"{objective}: next-token val loss {trained['val_loss']:.3f}, infill token accuracy "
            f"{scores['infill']['token_accuracy']:.3f}, exact match "
            f"{scores['infill']['exact_match']:.3f}"
        )
    v = verdict(results)
    report = [
        table(results),
        "",
        f"Equal compute: {args.steps} steps x {args.batch_size} x {args.seq_len} tokens per "
        f"objective; model dim {args.dim}, {args.n_layers} layers, vocabulary {args.vocab_size}. "
        f"Infilling: {len(pieces)} held-out pieces of {args.infill_len} tokens, one "
        f"{span_len}-token span each (± is one standard error over pieces).",
        "",
        *verdict_lines(v),
    ]
    print("\n" + "\n".join(report))
    summary = {
        "paper": "Artetxe et al. 2022, On the Role of Bidirectionality in Language Model "
        "Pre-Training",
        "settings": {k: x for k, x in vars(args).items() if k not in ("quiet", "threads")},
        "infill_span_tokens": span_len,
        "results": results,
        "verdict": v,
        "sample": sample(fills, tokenizer, pieces[0]),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(report) + "\n")
    plot(results, out / "bidirectionality.png")
    print(f"\nwrote {out / 'results.json'}, {out / 'summary.md'}, {out / 'bidirectionality.png'}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except HerdError as e:
        sys.exit(f"error: {e}")
