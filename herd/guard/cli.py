"""`herd guard`: classify conversations with a Llama Guard 3 style guard, train one, evaluate one.

    herd guard [check] CKPT --conversation C.json | --data ROWS [--role user|agent]
               [--categories S1,S9 | --policy POLICY.toml] [--threshold P] [--out F] [--json]
    herd guard train CONFIG.toml [--SECTION.FIELD VALUE ...]           herd/guard/train.py
    herd guard eval CKPT --data ROWS [--threshold P | --target-fpr R] [--out DIR] [--json]

C.json is a list of messages (or {"messages": [...]}); ROWS are labelled rows (herd/guard/data.py:
JSONL, Parquet, a folder of them or a Hugging Face dataset; `check` needs no label). `check`
prints each verdict, its categories (with their names) and the unsafe probability; with --out,
the rows with their results added go to a JSONL file, written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from herd import options
from herd.errors import HerdError

ACTIONS = ("check", "train", "eval")


def _add_guard_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="guard checkpoint: a converted Llama Guard 3 (1B or 8B) or a `herd guard train` run's",
    )
    p.add_argument(
        "--role",
        choices=["user", "agent"],
        help="assess the last message of this side (the conversation is cut after it; "
        "default: the last message, whoever wrote it)",
    )
    p.add_argument(
        "--categories",
        metavar="S1,S9",
        help="keep only these categories of the policy in the prompt (default: all of them)",
    )
    p.add_argument(
        "--policy",
        metavar="POLICY.toml",
        help="custom policy: base = 'llama-guard-3' | 'none', exclude = [codes], [[category]] "
        "code/name/description tables (default: Llama Guard 3's S1-S14)",
    )
    p.add_argument(
        "--batch-size", type=options.positive_int, default=8, help="conversations per forward"
    )
    p.add_argument("--split", default="train", help="dataset split of --data (default train)")
    options.add_device(p)


def add_arguments(p: argparse.ArgumentParser, add_train: Callable) -> None:
    sub = p.add_subparsers(dest="guard_action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="classify conversations (the default action: `herd guard CKPT ...`)",
        description="Classify the last message of conversations as safe or unsafe, with the "
        "violated categories and the unsafe probability (one forward pass per batch; the "
        "categories are generated for the unsafe ones only).",
    )
    _add_guard_model(check)
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--conversation", metavar="C.json", help="one conversation (JSON)")
    source.add_argument("--data", metavar="ROWS", help='many: rows {"messages": [...]}')
    check.add_argument(
        "--threshold",
        type=options.probability,
        default=0.5,
        help="unsafe at this probability or above",
    )
    check.add_argument("--out", help="JSONL file: the --data rows with a 'guard' result each")
    options.add_json(check, "the results")
    add_train(
        sub.add_parser(
            "train",
            help="fine-tune a guard on labelled conversations (through the SFT path)",
            description="Fine-tune a checkpoint into a guard on labelled conversations.",
        )
    )
    ev = sub.add_parser(
        "eval",
        help="precision, recall, F1, FPR and AUPRC overall and per category, with PR/ROC plots",
        description="Evaluate a guard on labelled conversations.",
    )
    _add_guard_model(ev)
    ev.add_argument("--data", required=True, metavar="ROWS", help="labelled rows")
    how = ev.add_mutually_exclusive_group()
    how.add_argument(
        "--threshold",
        type=options.probability,
        default=0.5,
        help="unsafe at this probability or above",
    )
    how.add_argument(
        "--target-fpr",
        type=options.probability,
        metavar="R",
        help="pick the lowest threshold whose false-positive rate on the safe rows is at most R",
    )
    ev.add_argument(
        "--out", help="folder for eval.json, predictions.jsonl, pr_curve.png and roc_curve.png"
    )
    options.add_json(ev, "the metrics")


def run(args: argparse.Namespace) -> None:
    if args.guard_action == "train":
        from herd.guard.train import run_guard_train

        run_guard_train(args)
    elif args.guard_action == "eval":
        run_eval(args)
    else:
        run_check(args)


def _guard(args, threshold: float):
    from herd.guard.classify import Guard
    from herd.guard.policy import resolve_policy

    policy = resolve_policy(args.policy, args.categories)  # bad policies fail before loading
    return Guard.load(args.checkpoint, policy, threshold, args.device, args.dtype, args.batch_size)


def _read_conversation(path: str) -> list[dict]:
    from herd.guard.data import check_labelled_row

    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise HerdError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: not JSON ({e})") from None
    row = {"messages": data} if isinstance(data, list) else data
    return check_labelled_row(row, path, require_label=False)["messages"]


def _selected(rows: list, role: str | None) -> list[list[dict]]:
    from herd.guard.prompt import select_role

    return [select_role(row["messages"], role, where) for where, row in rows]


def run_check(args: argparse.Namespace) -> None:
    from herd.atomic_files import write_file_atomically
    from herd.guard.data import read_labelled

    if args.out and not args.data:
        raise HerdError("--out writes the --data rows with their results; give --data")
    if args.conversation:
        rows = [(args.conversation, {"messages": _read_conversation(args.conversation)})]
    else:
        rows = read_labelled(args.data, args.split, require_label=False)
    conversations = _selected(rows, args.role)
    guard = _guard(args, args.threshold)
    results = guard.classify(conversations)
    if args.out:
        body = "".join(
            json.dumps({**row, "guard": result.to_dict()}) + "\n"
            for (_, row), result in zip(rows, results, strict=True)
        )
        write_file_atomically(Path(args.out), lambda f: f.write(body.encode()))
    if args.json:
        print(json.dumps({"results": [r.to_dict() for r in results]}))
        return
    for (where, _), r in zip(rows, results, strict=True):
        names = ", ".join(f"{c} {guard.policy.name_of(c)}" for c in r.categories)
        verdict = r.label + (f" ({names})" if names else "")
        prefix = f"{where}\t" if len(rows) > 1 else ""
        print(f"{prefix}{verdict}\tP(unsafe)={r.unsafe_probability:.4f}\t{r.role}")
    if args.out:
        print(f"wrote {len(results)} results to {args.out}", file=sys.stderr)


def run_eval(args: argparse.Namespace) -> None:
    import numpy as np

    from herd.atomic_files import write_file_atomically
    from herd.guard.data import read_labelled
    from herd.guard.evaluate import format_report, guard_metrics, plot_curves, threshold_for_fpr

    rows = read_labelled(args.data, args.split)
    conversations = _selected(rows, args.role)
    guard = _guard(args, args.threshold)
    probs = guard.unsafe_probabilities(conversations)
    threshold = args.threshold
    if args.target_fpr is not None:
        unsafe = np.array([row["label"] == "unsafe" for _, row in rows])
        threshold = threshold_for_fpr(np.array(probs), unsafe, args.target_fpr)
    guard.threshold = threshold
    results = guard.classify(conversations, probabilities=probs)
    labelled = [row for _, row in rows]
    metrics = guard_metrics(labelled, results, threshold, guard.policy.codes)
    if args.target_fpr is not None:
        metrics["overall"]["target_fpr"] = args.target_fpr
    if args.out:
        out = Path(args.out)
        body = json.dumps(metrics, indent=2) + "\n"
        write_file_atomically(out / "eval.json", lambda f: f.write(body.encode()))
        predictions = "".join(
            json.dumps({"source": where, "label": row["label"], "categories": row["categories"],
                        "guard": r.to_dict()}) + "\n"
            for (where, row), r in zip(rows, results, strict=True)
        )  # fmt: skip
        write_file_atomically(out / "predictions.jsonl", lambda f: f.write(predictions.encode()))
        plot_curves(labelled, results, guard.policy, out)
    if args.json:
        print(json.dumps(metrics))
        return
    print(format_report(metrics, guard.policy))
    if args.out:
        print(f"wrote eval.json, predictions.jsonl, pr_curve.png and roc_curve.png to {args.out}")


def add_guard_options(p: argparse.ArgumentParser, chat: bool = False) -> None:
    """--guard and its settings (`herd serve` and `herd chat`)."""
    if chat:
        what = (
            "each line you type and each reply: an unsafe line is answered with the refusal "
            "without running the model (and left out of the conversation), an unsafe reply is "
            "replaced by it; with a guard a reply is generated whole, checked, then printed (no "
            "token-by-token streaming); each decision is one line on stderr"
        )
    else:
        what = (
            "each request's last user turn and each reply: an unsafe request is answered with the "
            "refusal without running the model, an unsafe reply is replaced by it (both with "
            "finish_reason content_filter); a streamed reply is held until it has finished and "
            "passed, then sent as one chunk; each decision is logged on stderr and counted in "
            "/metrics"
        )
    p.add_argument(
        "--guard",
        metavar="CKPT",
        help="a Llama Guard 3 style safety guard (a converted Llama Guard 3, or `herd guard "
        f"train` output; loaded on --device in --dtype) that checks {what}",
    )
    p.add_argument(
        "--guard-threshold",
        type=options.probability,
        metavar="P",
        help="unsafe when the guard's P(unsafe) is at least P (default 0.5; `herd guard eval "
        "--target-fpr` picks one)",
    )
    p.add_argument(
        "--guard-categories",
        metavar="S1,S9",
        help="keep only these categories of the guard's policy (default: all of them)",
    )
    p.add_argument(
        "--guard-policy",
        metavar="POLICY.toml",
        help="the guard's policy file, as `herd guard --policy` reads it (default: Llama Guard "
        "3's S1-S14)",
    )
    p.add_argument(
        "--guard-refusal",
        metavar="TEXT",
        help="what an unsafe input or reply is answered with (default: \"I can't help with that "
        'request.")',
    )


def guard_policy(args: argparse.Namespace):
    """The guard's Policy (None without --guard), checked before anything loads: a bad --guard
    path or policy is a one-line error."""
    from herd.checkpoint.convert import detect_format
    from herd.guard.policy import resolve_policy

    if args.guard is None:
        given = [f for f in ("threshold", "categories", "policy", "refusal")
                 if getattr(args, f"guard_{f}") is not None]  # fmt: skip
        if given:
            raise HerdError(f"--guard-{given[0]} needs --guard CKPT")
        return None
    try:
        detect_format(Path(args.guard))
    except HerdError as e:
        raise HerdError(f"--guard {e}") from None
    return resolve_policy(args.guard_policy, args.guard_categories)
