"""`herd eval` (Belebele, generic multiple choice, perplexity) and `herd lm-eval` (lm-eval's CLI
with herd registered as a model)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from herd import options
from herd.errors import HerdError

TASKS = ("belebele", "mc", "perplexity")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="herd, HF or Meta folder or .bin file")
    p.add_argument(
        "--task",
        required=True,
        choices=TASKS,
        help="belebele: reading comprehension (per-language accuracy); mc: any "
        "multiple-choice JSONL in herd's generic schema (herd/eval/mc_data.py); "
        "perplexity: loss, perplexity and bits per byte",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="belebele: a folder of per-language JSONL/Parquet files, one file, or "
        "'facebook/belebele' (online, needs `datasets`); mc: a JSONL file or folder; "
        "perplexity: text files/folders/JSONL/Parquet or a `herd data prepare` folder",
    )
    p.add_argument(
        "--languages",
        default=None,
        help="comma-separated language codes to evaluate (e.g. eng_Latn,fra_Latn); "
        "default: all found",
    )
    p.add_argument(
        "--shots",
        type=int,
        default=0,
        choices=[0, 1, 5],
        help="few-shot examples before each question: other questions of the same "
        "language, never the question's own passage",
    )
    p.add_argument(
        "--scoring",
        default="letter",
        choices=["letter", "answer"],
        help="letter: log-likelihood of ' A'..' D' after the lettered options "
        "(lm-eval's belebele); answer: per-byte log-likelihood of each answer text",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="first N items per language (perplexity: first N documents)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="a malformed row is fatal (default: reported with file and line, skipped and counted)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="RESULTS.json",
        help="write the results, with every item's choice and scores, to this JSON file",
    )
    options.add_json(p, "the results (with every item's choice and scores; no table)")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PNG",
        help="accuracy bar chart across languages (default: next to --out, as .png)",
    )
    p.add_argument(
        "--split", default="val", help="perplexity on a `herd data prepare` folder: which split"
    )
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward pass")
    options.add_device(p)
    options.add_bos(p, default=True, what="every prompt")


def run_eval(args: argparse.Namespace) -> None:
    from herd.checkpoint.loading import load_for_command

    if args.limit is not None and args.limit < 1:
        raise HerdError(f"--limit {args.limit}: expected a positive number")
    model, tokenizer, device = load_for_command(
        args.checkpoint, args.device, args.dtype, "to encode the evaluation text"
    )
    # With --json, stdout carries the one JSON object; the human-readable lines go to stderr.
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    start = time.perf_counter()
    if args.task == "perplexity":
        from herd.eval.perplexity import perplexity

        result = perplexity(model, tokenizer, args.data, args.split, args.limit)
        say(
            f"loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.3f}, "
            f"{result['bits_per_byte']:.4f} bits/byte over {result['tokens']:,} tokens "
            f"({result['documents']} documents, {result['bytes']:,} bytes)"
        )
        _report(args, {"task": "perplexity", "checkpoint": args.checkpoint, **result}, say)
        return
    from herd.eval.mc_data import load_items
    from herd.eval.multiple_choice import evaluate_items, summarise

    schema = "belebele" if args.task == "belebele" else "mc"
    languages = [x for x in args.languages.split(",") if x] if args.languages else None
    data = load_items(args.data, schema, languages, args.strict, args.limit)
    for problem in data.problems[:5]:
        sys.stderr.write(f"skipped {problem}\n")
    if len(data.problems) > 5:
        sys.stderr.write(f"... and {len(data.problems) - 5} more malformed rows skipped\n")
    results = evaluate_items(
        model,
        tokenizer,
        data,
        args.task,
        args.scoring,
        args.shots,
        args.batch_size,
        bos=args.bos,
    )
    seconds = time.perf_counter() - start
    summary = summarise(results)
    say(f"{'language':<14}{'items':>7}{'accuracy':>10}   95% interval")
    for lang, row in sorted(summary["languages"].items(), key=lambda kv: -kv[1]["accuracy"]):
        low, high = row["ci95"]
        say(f"{lang:<14}{row['items']:>7}{row['accuracy']:>10.3f}   [{low:.3f}, {high:.3f}]")
    say(
        f"macro average {summary['macro_accuracy']:.3f} over {len(summary['languages'])} "
        f"languages; {summary['items']} items in {seconds:.1f} s "
        f"({summary['items'] / seconds:.1f} items/s on {device}); "
        f"{len(data.problems)} malformed rows skipped"
    )
    record = {
        "task": args.task,
        "checkpoint": args.checkpoint,
        "data": args.data,
        "scoring": args.scoring,
        "shots": args.shots,
        "skipped_rows": data.problems,
        **summary,
        "items_per_s": summary["items"] / seconds,
        "results": [
            {
                "id": r.item.uid,
                "language": r.item.language,
                "answer": r.item.answer,
                "choice": r.choice,
                "correct": r.correct,
                "logprobs": r.logprobs,
                "scores": r.scores,
            }
            for r in results
        ],
    }
    _report(args, record, say)
    plot = args.plot or (args.out.with_suffix(".png") if args.out else None)
    if plot is not None and len(summary["languages"]) >= 1:
        from herd.eval.plots import plot_accuracy

        plot_accuracy(summary, plot, title=f"{args.task} ({args.scoring}, {args.shots}-shot)")
        say(f"wrote {plot}")


def _report(args: argparse.Namespace, record: dict, say) -> None:
    """The record as JSON on stdout (--json) and/or in the --out file (written atomically)."""
    text = json.dumps(record, indent=1) + "\n"
    if args.json:
        sys.stdout.write(text)
    if args.out is not None:
        from herd.atomic_files import write_file_atomically

        write_file_atomically(args.out, lambda f: f.write(text.encode()))
        say(f"wrote {args.out}")


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's own command line, with the "herd" model registered."""
    try:
        from lm_eval.__main__ import cli_evaluate

        import herd.eval.lm_eval_backend  # noqa: F401 - registers the model
    except ImportError:
        raise HerdError(
            "herd lm-eval needs lm-evaluation-harness: pip install 'lm-eval[hf]'"
        ) from None
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0
