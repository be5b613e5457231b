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
import math
import os
import sys
import time
from pathlib import Path

# On a CPU shared with other jobs, OpenMP workers that spin while waiting made 2-thread training
# steps 3x slower than 1-thread ones here (bench/generate.py saw the same in decoding); passive
# waiting keeps 2 threads at least as fast as 1. Set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from herd.checkpoint.convert import load
from herd.config import RunConfig, dump_toml, load_run_config
from herd.data.objectives import OBJECTIVES, ObjectiveConfig, infill_prompt, sample_spans
from herd.data.shards import TokenShards, prepare
from herd.data.sources import stdlib_files
from herd.errors import HerdError
from herd.generate import generate
from herd.model.masks import PackedAttention
from herd.tokenizer.train import train_bpe
from herd.train.checkpoint import list_checkpoints
from herd.train.plots import read_metrics
from herd.train.trainer import Trainer

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
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/bidirectionality", help="folder for everything written")
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
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny model, corpus subset and few steps: a smoke test (overrides the sizes above)",
    )
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
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


# --- 3. infilling ------------------------------------------------------------------------------


def infill_pieces(
    data: TokenShards, length: int, count: int, seed: int
) -> list[tuple[list[int], tuple[int, int]]]:
    """`count` held-out pieces of exactly `length` tokens, each with the one span to infill.

    Pieces are consecutive, non-overlapping cuts of held-out documents (a document's first piece
    starts with BOS, like a training window that starts a document; the rest start mid-file, like
    most training windows). Spans follow the training rule for a piece of this length, so the span
    length (15% of the inner tokens) is one the masked models were trained on.
    """
    starts = []
    shards = data.shards("val")
    for s, (_, offsets) in enumerate(shards):
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            starts += [(s, i) for i in range(a, b - length + 1, length)]
    if not starts:
        raise HerdError(f"the held-out split has no document of {length} tokens to infill")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(starts), generator=generator)[:count].sort().values.tolist()
    rule = ObjectiveConfig(name="mskbi")  # the trainer's span settings: one span, 15%
    pieces = []
    for k in chosen:
        s, i = starts[k]
        tokens = [int(t) for t in shards[s][0][i : i + length]]
        spans = sample_spans(length, rule, generator)
        pieces.append((tokens, spans[0]))
    return pieces


def sentinel_example(tokens: list[int], span: tuple[int, int], sentinels: list[int]):
    """(sequence, first scored index, bidirectional region) in the masked objectives' format."""
    prompt = infill_prompt(tokens, [span], sentinels)
    # Training marks the context (everything before the appended sentinel) as bidirectional.
    return prompt + tokens[span[0] : span[1]], len(prompt), len(prompt) - 1


def prefix_example(tokens: list[int], span: tuple[int, int]):
    """(sequence, first scored index, bidirectional region): continue the text before the span."""
    return tokens[: span[1]], span[0], span[0]


@torch.no_grad()
def teacher_forced(model, examples: list, bidirectional: bool, batch_size: int = 32) -> dict:
    """Per-token accuracy, exact match and loss of the scored tokens of every example.

    An example is (sequence, first, region): tokens sequence[first:] are scored, each from all
    tokens before it, and tokens before `region` attend both ways when `bidirectional`. Examples
    of different lengths are right-padded into a second packed document, which they cannot see.
    """
    hits, exact, nats, per_example = 0, 0, 0.0, []
    for b in range(0, len(examples), batch_size):
        batch = examples[b : b + batch_size]
        width = max(len(seq) for seq, _, _ in batch) - 1
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        docs = torch.ones(len(batch), width, dtype=torch.long)
        both = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, (seq, _, region) in enumerate(batch):
            inputs[r, : len(seq) - 1] = torch.tensor(seq[:-1])
            docs[r, : len(seq) - 1] = 0
            both[r, :region] = True
        packed = PackedAttention(docs, both if bidirectional else None)
        logits = model(inputs, packed=packed).float()
        for r, (seq, first, _) in enumerate(batch):
            scored = logits[r, first - 1 : len(seq) - 1]
            target = torch.tensor(seq[first:])
            right = scored.argmax(-1) == target
            hits += int(right.sum())
            exact += bool(right.all())
            nats += float(F.cross_entropy(scored, target, reduction="sum"))
            per_example.append(float(right.float().mean()))
    n_tokens = sum(len(seq) - first for seq, first, _ in examples)
    mean = sum(per_example) / len(per_example)
    spread = sum((x - mean) ** 2 for x in per_example) / max(len(per_example) - 1, 1)
    return {
        "token_accuracy": hits / n_tokens,
        # standard error over pieces (all pieces score the same number of tokens)
        "token_accuracy_se": math.sqrt(spread / len(per_example)),
        "exact_match": exact / len(examples),
        "loss": nats / n_tokens,
        "tokens_scored": n_tokens,
    }


def greedy_fill(model, prompt: list[int], n_new: int, region: int, bidirectional: bool):
    """Greedy continuation of `prompt` by herd's generator (what `herd generate --infill` runs):
    the prompt's first `region` tokens attend both ways in the prefill when `bidirectional`, as a
    bidirectional-attention model was trained, then decoding is causal over the KV cache."""
    return generate(model, prompt, n_new, bidirectional_prefix=region if bidirectional else 0)


def evaluate_infilling(checkpoint: str, objective: str, pieces: list, sentinels: list[int]):
    model = load(checkpoint)
    model.eval()
    bidirectional = OBJECTIVES[objective][1]  # attend as the model was trained to
    sentinel = [sentinel_example(t, s, sentinels) for t, s in pieces]
    prefix = [prefix_example(t, s) for t, s in pieces]
    return model, {
        "infill": teacher_forced(model, sentinel, bidirectional),
        "prefix_only": teacher_forced(model, prefix, bidirectional),
    }


# --- 4. report ---------------------------------------------------------------------------------


def verdict(results: dict) -> dict:
    """Compare along each knob of the paper's grid, pairs that differ in that knob only.

    A next-token model's infilling is its better format (sentinel prompt or prefix-only), so
    bidirectional context has to beat what the other model can do at all.
    """
    if set(results) != set(OBJECTIVES):
        return {}

    def infill(name: str) -> float:
        r = results[name]
        if OBJECTIVES[name][0]:
            return r["infill"]["token_accuracy"]
        return max(r["infill"]["token_accuracy"], r["prefix_only"]["token_accuracy"])

    knobs = {
        "context": [("nxtuni", "mskuni"), ("nxtpre", "mskbi")],
        "attention": [("nxtuni", "nxtpre"), ("mskuni", "mskbi")],
    }
    out = {}
    for knob, pairs in knobs.items():
        comparisons = [
            {
                "without": a,
                "with": b,
                "infill_accuracy_gain": infill(b) - infill(a),
                "next_token_loss_change": results[b]["val_loss"] - results[a]["val_loss"],
            }
            for a, b in pairs
        ]
        out[knob] = {
            "pairs": comparisons,
            "helps_infilling": all(c["infill_accuracy_gain"] > 0 for c in comparisons),
            "hurts_next_token": all(c["next_token_loss_change"] > 0 for c in comparisons),
        }
    ctx = out["context"]
    out["trade_off_shows"] = ctx["helps_infilling"] and ctx["hurts_next_token"]
    return out


def verdict_lines(v: dict) -> list[str]:
    if not v:
        return ["(the verdict needs all four objectives)"]
    lines = []
    for knob in ("context", "attention"):
        parts = [
            f"{c['with']} vs {c['without']}: infill accuracy {c['infill_accuracy_gain']:+.3f}, "
            f"next-token loss {c['next_token_loss_change']:+.3f}"
            for c in v[knob]["pairs"]
        ]
        lines.append(f"bidirectional {knob}: " + "; ".join(parts))
    pairs = v["context"]["pairs"]
    better = sum(c["infill_accuracy_gain"] > 0 for c in pairs)
    worse = sum(c["next_token_loss_change"] > 0 for c in pairs)
    counts = (
        f"bidirectional context gives better infilling in {better} of {len(pairs)} pairs and "
        f"worse next-token loss in {worse} of {len(pairs)}"
    )
    if v["trade_off_shows"]:
        lines.append(f"The paper's trade-off SHOWS at this scale: {counts}.")
    else:
        lines.append(f"The paper's trade-off does NOT show at this scale: {counts}.")
    return lines


def table(results: dict) -> str:
    head = (
        "| objective | context | attention | tokens trained | next-token val loss | val bpb | "
        "infill token acc | infill exact match | infill loss | prefix-only token acc | "
        "prefix-only exact match |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name, r in results.items():
        context, attention = OBJECTIVES[name]
        i, p = r["infill"], r["prefix_only"]
        lines.append(
            f"| {name} | {'bi' if context else 'uni'} | {'bi' if attention else 'uni'} | "
            f"{r['tokens']:,} | {r['val_loss']:.3f} | {r['val_bpb']:.3f} | "
            f"{i['token_accuracy']:.3f} ± {i['token_accuracy_se']:.3f} | {i['exact_match']:.3f} | "
            f"{i['loss']:.3f} | {p['token_accuracy']:.3f} ± {p['token_accuracy_se']:.3f} | "
            f"{p['exact_match']:.3f} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    names = list(results)
    x = torch.arange(len(names)).tolist()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    ax = axes[0]
    ax.bar(x, [results[n]["val_loss"] for n in names], color="tab:blue")
    ax.set_title("next-token validation loss (lower is better)")
    ax.set_ylabel("nats / token")
    for ax, metric, title in (
        (axes[1], "token_accuracy", "infilling: span token accuracy"),
        (axes[2], "exact_match", "infilling: exact match of the span"),
    ):
        w = 0.38
        ax.bar(
            [i - w / 2 for i in x],
            [results[n]["infill"][metric] for n in names],
            w,
            label="sentinel prompt",
            color="tab:orange",
        )
        ax.bar(
            [i + w / 2 for i in x],
            [results[n]["prefix_only"][metric] for n in names],
            w,
            label="prefix only",
            color="tab:gray",
        )
        ax.set_title(title + " (higher is better)")
        ax.legend(fontsize=8)
    for ax in axes[:3]:
        ax.set_xticks(x, names)
        ax.grid(axis="y", alpha=0.3)
    top = max(max(results[n][k]["exact_match"] for n in names) for k in ("infill", "prefix_only"))
    axes[2].set_ylim(0, max(0.05, 1.15 * top))  # an all-zero panel still gets a sensible axis
    ax = axes[3]
    for n in names:
        curve = results[n]["val_curve"]
        ax.plot([c[0] / 1e6 for c in curve], [c[1] for c in curve], "o-", label=n)
    ax.set_title("next-token validation loss while training")
    ax.set_xlabel("tokens processed (millions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Artetxe et al. 2022 objectives at equal compute (standard-library corpus)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample(model_fills: dict, tokenizer, piece: tuple[list[int], tuple[int, int]]) -> dict:
    tokens, (start, end) = piece
    return {
        "before": tokenizer.decode(tokens[:start]),
        "span": tokenizer.decode(tokens[start:end]),
        "after": tokenizer.decode(tokens[end:]),
        "greedy_fills": {name: tokenizer.decode(ids) for name, ids in model_fills.items()},
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
