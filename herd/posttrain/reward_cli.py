"""`herd rm`: train a reward model, score (prompt, response) pairs with it, evaluate it.

    herd rm [train] CONFIG.toml [--SECTION.FIELD VALUE ...]   herd/posttrain/reward_run.py
    herd rm score CKPT --data ROWS [--out SCORES.jsonl] [--json]
    herd rm eval CKPT --data PAIRS [--out DIR] [--margin none|small|large] [--json]

`score` reads rows {"prompt": string or messages, "response": string, message or messages}
(JSONL, Parquet, a folder of them or a Hugging Face dataset) and gives each its reward: the rows
with a "score" field added in --out (JSONL, written whole or not at all), else one line per row
on stdout. Every row must be well formed, since a skipped row would shift the scores: the first
bad one is a one-line error naming FILE:LINE.

`eval` scores held-out preference pairs (the rows `herd rm` trains on; malformed ones are skipped
and reported) and reports the accuracy (r_c > r_r) overall and per rating level, as Llama 2's
Table 8 does; with --out it writes DIR/eval.json and DIR/score_differences.png, the distribution
of r_c − r_r for each rating level.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from herd import options
from herd.errors import HerdError


def add_arguments(p: argparse.ArgumentParser, add_train: Callable) -> None:
    sub = p.add_subparsers(dest="rm_action", metavar="ACTION", required=True, parser_class=type(p))
    add_train(
        sub.add_parser(
            "train",
            help="train a reward model (the default action: `herd rm CONFIG.toml`)",
            description="Train a reward model on preference pairs on the pretraining engine.",
        )
    )
    score = sub.add_parser(
        "score",
        help="score prompt/response rows with a reward model",
        description="Score rows {prompt, response} with a reward-model checkpoint.",
    )
    score.add_argument("checkpoint", metavar="CKPT", help="reward-model checkpoint folder")
    score.add_argument(
        "--data",
        required=True,
        help='rows {"prompt": string or messages, "response": string, message or messages}: '
        "JSONL, Parquet, a folder of them or a Hugging Face dataset",
    )
    score.add_argument(
        "--out", help="JSONL file to write: every row with its 'score' added (default: stdout)"
    )
    _add_common(score, "the scores")
    ev = sub.add_parser(
        "eval",
        help="accuracy per rating level on held-out pairs, and a plot of the score differences",
        description="Evaluate a reward model on preference pairs: accuracy overall and per "
        "rating level, and the distribution of r(chosen) - r(rejected) per level.",
    )
    ev.add_argument("checkpoint", metavar="CKPT", help="reward-model checkpoint folder")
    ev.add_argument("--data", required=True, help="preference pairs, as `herd rm` trains on")
    ev.add_argument("--out", help="folder for eval.json and score_differences.png")
    ev.add_argument(
        "--margin",
        default="none",
        choices=["none", "small", "large"],
        help="margin table for the reported ranking loss (default none)",
    )
    _add_common(ev, "the accuracies")


def _add_common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--batch-size", type=options.positive_int, default=8, help="rows per forward")
    p.add_argument("--split", default="train", help="dataset split to read (default train)")
    options.add_device(p)
    options.add_json(p, what)


def run(args: argparse.Namespace) -> None:
    if args.rm_action == "train":
        from herd.posttrain.reward_run import run_rm_train

        run_rm_train(args)
    elif args.rm_action == "score":
        run_score(args)
    else:
        run_eval(args)


def _load(args):
    from herd.posttrain.reward import load_reward_model

    return load_reward_model(args.checkpoint, args.device, args.dtype)


def run_score(args: argparse.Namespace) -> None:
    from herd.atomic_files import write_file_atomically
    from herd.data.chat_data import read_rows
    from herd.posttrain.reward import conversation_ids, reward_pad_id, score_sequences

    model, tok = _load(args)
    rows, sources, ids = [], [], []
    for where, row in read_rows(args.data, args.split):
        try:
            if isinstance(row, Exception):
                raise ValueError(str(row))
            if not isinstance(row, dict) or "prompt" not in row or "response" not in row:
                raise ValueError("expected an object with 'prompt' and 'response'")
            tokens = conversation_ids(tok, row["prompt"], row["response"])
        except ValueError as e:
            raise HerdError(f"{where}: {e}") from None
        if len(tokens) > model.config.max_seq_len:
            raise HerdError(
                f"{where}: {len(tokens)} tokens, longer than the model's context "
                f"{model.config.max_seq_len}"
            )
        rows.append(row)
        sources.append(where)
        ids.append(tokens)
    if not rows:
        raise HerdError(f"{args.data}: no rows to score")
    scores = score_sequences(model, ids, args.batch_size, reward_pad_id(tok))
    if args.out:

        def write(f) -> None:
            for row, value in zip(rows, scores, strict=True):
                f.write((json.dumps({**row, "score": value}) + "\n").encode())

        write_file_atomically(Path(args.out), write)
    if args.json:
        print(json.dumps({"scores": scores, "sources": sources}))
    elif args.out:
        print(f"wrote {len(scores)} scores to {args.out}")
    else:
        for where, value in zip(sources, scores, strict=True):
            print(f"{value:.6f}\t{where}")


def evaluate_pairs(model, tok, examples, batch_size: int) -> dict:
    """Per-pair score differences r_c − r_r, the accuracy overall and per rating level."""
    import torch

    from herd.posttrain.reward import LEVELS, level_key, ranking_loss, reward_pad_id
    from herd.posttrain.reward import score_sequences as score

    pad = reward_pad_id(tok)
    chosen = score(model, [e.prompt_ids + e.chosen_ids for e in examples], batch_size, pad)
    rejected = score(model, [e.prompt_ids + e.rejected_ids for e in examples], batch_size, pad)
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    margins = torch.tensor([e.margin for e in examples])
    loss, _ = ranking_loss(c, r, margins)
    differences = (c - r).tolist()
    levels: dict[str, dict] = {}
    for slot in [*reversed(range(len(LEVELS))), None]:
        picked = [d for d, e in zip(differences, examples, strict=True) if e.level == slot]
        if picked:
            levels[level_key(slot)] = {
                "pairs": len(picked),
                "accuracy": sum(d > 0 for d in picked) / len(picked),
                "mean_difference": sum(picked) / len(picked),
                "differences": picked,
            }
    return {
        "pairs": len(examples),
        "accuracy": sum(d > 0 for d in differences) / len(differences),
        "mean_difference": sum(differences) / len(differences),
        "loss": float(loss),
        "levels": levels,
    }


def plot_differences(result: dict, path: Path) -> Path:
    """score_differences.png: a histogram of r_c − r_r for each rating level present."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    from herd.atomic_files import write_file_atomically

    fig, ax = plt.subplots(figsize=(7, 4))
    every = [d for level in result["levels"].values() for d in level["differences"]]
    low, high = min([*every, 0.0]), max([*every, 0.0])
    bins = [low + (high - low) * i / 30 for i in range(31)] if high > low else 30
    for name, level in result["levels"].items():
        label = f"{name.replace('_', ' ')} (n={level['pairs']}, acc {level['accuracy']:.2f})"
        ax.hist(level["differences"], bins=bins, histtype="step", lw=1.5, label=label)
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("r(chosen) − r(rejected)")
    ax.set_ylabel("pairs")
    ax.set_title(f"score differences by rating (accuracy {result['accuracy']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_file_atomically(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def run_eval(args: argparse.Namespace) -> None:
    from herd.atomic_files import write_file_atomically
    from herd.posttrain.reward_data import load_reward_pairs

    model, tok = _load(args)
    data = load_reward_pairs(
        tok, args.data, model.config.max_seq_len, args.margin, split=args.split
    )
    for problem in data.problems[:5]:
        print(f"skipped {problem}", file=sys.stderr)
    c = data.counts
    print(
        f"rm eval: {c['kept']} of {c['rows']} pairs kept ({c['malformed']} malformed, "
        f"{c['too_long']} longer than the model's context)",
        file=sys.stderr,
    )
    if not data.examples:
        raise HerdError(f"{args.data}: no usable preference pair")
    result = evaluate_pairs(model, tok, data.examples, args.batch_size)
    summary = {k: v for k, v in result.items() if k != "levels"}
    summary["levels"] = {
        name: {k: v for k, v in level.items() if k != "differences"}
        for name, level in result["levels"].items()
    }
    if args.out:
        out = Path(args.out)
        body = json.dumps({**summary, "levels": result["levels"]}, indent=2) + "\n"
        write_file_atomically(out / "eval.json", lambda f: f.write(body.encode()))
        plot_differences(result, out / "score_differences.png")
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{'rating':<28}{'pairs':>7}{'accuracy':>10}{'mean r_c - r_r':>16}")
    for name, level in summary["levels"].items():
        print(
            f"{name.replace('_', ' '):<28}{level['pairs']:>7}{level['accuracy']:>10.3f}"
            f"{level['mean_difference']:>16.4f}"
        )
    print(
        f"{'all':<28}{summary['pairs']:>7}{summary['accuracy']:>10.3f}"
        f"{summary['mean_difference']:>16.4f}"
    )
    if args.out:
        print(
            f"wrote {Path(args.out) / 'eval.json'} and {Path(args.out) / 'score_differences.png'}"
        )
