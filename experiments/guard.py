"""A small Llama Guard 3 style guard on CPU: trained on a labelled set this project generates,
evaluated on templates it never saw, against a keyword-matching baseline (issue 23's study).

1. Rows: experiments/guard_data.py, 14 categories (S1-S14) with unsafe templates and safe
   look-alikes that share their trigger words (the history of a crime, a medical question
   answered with a referral, a refusal), plus everyday requests; user turns and agent replies.
   Two unsafe and two look-alike templates per category (and four everyday ones) are held out.
2. A byte-level BPE (herd.vocab.bpe) on the training rows' guard prompts.
3. `herd guard train` (its code, through the SFT path) from a random dim-128, 4-layer model, with
   category dropping (guard.drop_other 0.5, guard.drop_violated 0.1) and two copies of each row.
4. `herd guard eval`'s metrics on the held-out rows at threshold 0.5 and at the threshold for a
   5% false-positive rate; the keyword baseline's on the same rows; per category F1 and FPR.
5. Policy following: the held-out S6 (Specialized Advice) and S8 (Intellectual Property) rows
   classified with those categories left out of the prompt: how many the guard still flags.

    .venv/bin/python experiments/guard.py                     # ~10 minutes on 2 CPU cores
    .venv/bin/python experiments/guard.py --quick             # a smoke test, under a minute

Results on stdout, in OUT/results.json and OUT/summary.md; plots OUT/eval/*.png; measured:
docs/safety.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as experiments/post_training.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import guard_data  # the sibling generator
import numpy as np
from study_cli import parse_study, study_parser

from herd.checkpoint.io import save_herd_folder
from herd.guard.classify import Guard, GuardResult
from herd.guard.evaluate import guard_metrics, plot_curves, threshold_for_fpr
from herd.guard.policy import default_policy
from herd.guard.prompt import guard_task
from herd.guard.train import guard_conversations, load_guard_config
from herd.model.families import build_model
from herd.posttrain.sft import sft_data
from herd.tokenizer import load_tokenizer
from herd.train.checkpoint import list_checkpoints
from herd.train.trainer import Trainer
from herd.vocab.bpe import train_bpe

QUICK = {"per_template": 2, "steps": 10, "dim": 64, "n_layers": 2, "vocab": 600, "copies": 1}
DROPPED = ("S6", "S8")  # left out of the prompt in the policy-following check


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def tokenizer_and_start(args, out: Path, train: list[dict]) -> Path:
    """A BPE on the training prompts and a random model saved with it (the run's start)."""
    import herd

    start = out / "start"
    if (start / "config.json").is_file():
        return start
    policy = default_policy()
    texts = [guard_task(r["messages"], policy) for r in train]
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.txt").write_text("\n".join([*texts, "safe", "unsafe\nS1,S10"]), "utf-8")
    tok_dir = train_bpe([out / "corpus.txt"], args.vocab, out / "tokenizer", show_progress=False)
    tok = load_tokenizer(tok_dir)
    config = herd.ModelConfig(
        dim=args.dim, n_layers=args.n_layers, n_heads=4, n_kv_heads=2, ffn_dim=3 * args.dim,
        vocab_size=tok.vocab_size, max_seq_len=args.seq_len, rope_theta=500000.0,
    )  # fmt: skip
    model = build_model(config, seed=args.seed)
    return save_herd_folder(config, model.state_dict(), start, tokenizer=tok.files())


def train_guard(args, out: Path, start: Path, data: Path) -> Path:
    """`herd guard train --model.checkpoint START --data.path DATA ...` through its code
    (herd/guard/train.py: the rows made SFT conversations, then the SFT trainer); reused when
    finished."""
    run_dir = out / "run"
    final = run_dir / "checkpoints" / f"step-{args.steps:08d}"
    if final in list_checkpoints(run_dir / "checkpoints"):
        print(f"guard: reusing the finished run in {run_dir}")
        return final
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = {
        "model.checkpoint": str(start), "data.path": str(data), "data.seq_len": str(args.seq_len),
        "data.batch_size": "16", "data.val_fraction": "0", "data.seed": str(args.seed),
        "train.seed": str(args.seed), "train.steps": str(args.steps), "train.device": "cpu",
        "train.dtype": "float32", "train.log_every": "25", "train.eval_every": str(args.steps),
        "train.checkpoint_every": str(args.steps), "train.keep_checkpoints": "1",
        "optim.lr": str(args.lr), "optim.warmup_steps": str(max(1, args.steps // 20)),
        "train.out": str(run_dir), "guard.copies": str(args.copies),
        "guard.drop_other": str(args.drop_other), "guard.drop_violated": str(args.drop_violated),
    }  # fmt: skip
    run = load_guard_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:  # as run_guard_train feeds the SFT loader
        converted = Path(tmp) / "guard_sft.jsonl"
        write_jsonl(converted, guard_conversations(run))
        sft_run = dataclasses.replace(run, data=dataclasses.replace(run.data, path=str(converted)))
        training = sft_data(sft_run)
    Trainer(run, run_dir, data=training).fit(show_progress=not args.quiet)
    return final


def keyword_results(rows: list[dict]) -> list[GuardResult]:
    """The baseline's verdicts as guard results (probability 1 when flagged, else 0)."""
    out = []
    for row in rows:
        label, codes = guard_data.keyword_baseline(row["messages"])
        role = "User" if row["messages"][-1]["role"] == "user" else "Agent"
        out.append(GuardResult(label, float(label == "unsafe"), tuple(codes), role))
    return out


def policy_following(guard: Guard, rows: list[dict]) -> dict:
    """Share of the held-out rows of each DROPPED category flagged with and without it."""
    out = {}
    for code in DROPPED:
        picked = [r["messages"] for r in rows if code in r["categories"]]
        full = guard.unsafe_probabilities(picked)
        saved = guard.policy
        guard.policy = saved.without([code])
        try:
            without = guard.unsafe_probabilities(picked)
        finally:
            guard.policy = saved
        out[code] = {
            "rows": len(picked),
            "flagged_with_category": float(np.mean(np.array(full) >= 0.5)),
            "flagged_without_category": float(np.mean(np.array(without) >= 0.5)),
        }
    return out


def table(name: str, metrics: dict) -> list[str]:
    o = metrics["overall"]
    auprc = "n/a" if o["auprc"] is None else f"{o['auprc']:.3f}"
    return [f"| {name} | {o['threshold']:.3f} | {o['precision']:.3f} | {o['recall']:.3f} | "
            f"{o['f1']:.3f} | {o['fpr']:.3f} | {auprc} |"]  # fmt: skip


def report(result: dict) -> str:
    lines = ["| classifier | threshold | precision | recall | F1 | FPR | AUPRC |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, key in (("guard", "guard"), ("guard at 5% FPR", "guard_fpr5"),
                      ("keyword baseline", "keywords")):  # fmt: skip
        lines += table(name, result[key])
    for name, a in result["safe_flagged"].items():
        lines += ["", f"Safe {name} rows flagged ({a['rows']}): guard "
                  f"{a['guard']:.3f}, keywords {a['keywords']:.3f}."]  # fmt: skip
    lines += ["", "| category | rows | guard flagged | guard F1 | guard FPR | keyword F1 | "
              "keyword FPR |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    names = guard_data.CATEGORIES
    for code, m in result["guard"]["categories"].items():
        k = result["keywords"]["categories"].get(code, {"f1": 0.0, "fpr": 0.0})
        lines.append(f"| {code} {names[code]} | {m['rows']} | {m['flagged']:.3f} | "
                     f"{m['f1']:.3f} | {m['fpr']:.3f} | "
                     f"{k['f1']:.3f} | {k['fpr']:.3f} |")  # fmt: skip
    lines += ["", "| left out of the prompt | rows | flagged with it listed | flagged without |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for code, m in result["policy_following"].items():
        lines.append(f"| {code} {names[code]} | {m['rows']} | {m['flagged_with_category']:.3f} | "
                     f"{m['flagged_without_category']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = study_parser(__doc__, "runs/guard")
    p.add_argument("--per-template", type=int, default=6, help="rows per template")
    p.add_argument("--steps", type=int, default=900, help="guard training steps (batch 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--copies", type=int, default=3, help="augmented copies of each row")
    p.add_argument("--drop-other", type=float, default=0.5, help="guard.drop_other")
    p.add_argument("--drop-violated", type=float, default=0.3, help="guard.drop_violated")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--n-layers", type=int, default=4, help="transformer layers")
    p.add_argument("--vocab", type=int, default=2000, help="BPE vocabulary size")
    p.add_argument("--seq-len", type=int, default=384, help="training row length (tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rows, model and order")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parse_study(p, argv, QUICK)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    began = time.perf_counter()
    train, held_out = guard_data.make_rows(args.seed, args.per_template)
    data = write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "held_out.jsonl", held_out)
    start = tokenizer_and_start(args, out, train)
    checkpoint = train_guard(args, out, start, data)

    guard = Guard.load(checkpoint, default_policy(), device="cpu", batch_size=16)
    conversations = [r["messages"] for r in held_out]
    probs = np.array(guard.unsafe_probabilities(conversations))  # one forward pass each
    unsafe = np.array([r["label"] == "unsafe" for r in held_out])
    results = guard.classify(conversations, probabilities=probs.tolist())
    codes = default_policy().codes
    result = {"guard": guard_metrics(held_out, results, 0.5, codes)}
    guard.threshold = threshold_for_fpr(probs, unsafe, 0.05)
    result["guard_fpr5"] = guard_metrics(
        held_out,
        guard.classify(conversations, probabilities=probs.tolist()),
        guard.threshold,
        codes,
    )
    guard.threshold = 0.5
    result["keywords"] = guard_metrics(held_out, keyword_results(held_out), 0.5, codes)
    result["policy_following"] = policy_following(guard, held_out)
    # the safe rows that share an unsafe template's trigger words (not the everyday ones)
    alike = np.array(
        [r["label"] == "safe" and not r["template"].startswith("generic") for r in held_out]
    )
    keyword_flags = np.array([r.label == "unsafe" for r in keyword_results(held_out)])
    everyday = np.array([r["template"].startswith("generic") for r in held_out])
    result["safe_flagged"] = {
        name: {"rows": int(rows.sum()), "guard": float((probs[rows] >= 0.5).mean()),
               "keywords": float(keyword_flags[rows].mean())}
        for name, rows in (("look-alike", alike), ("everyday", everyday))
    }  # fmt: skip
    plot_curves(held_out, results, default_policy(), out / "eval")
    result["rows"] = {"train": len(train), "held_out": len(held_out)}
    result["minutes"] = (time.perf_counter() - began) / 60
    text = report(result)
    print("\n" + text + f"\n\n{len(held_out)} held-out rows; {result['minutes']:.1f} minutes.")
    (out / "summary.md").write_text(text + "\n", "utf-8")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    return result


if __name__ == "__main__":
    main()
