"""The Llama 2-Chat loop at toy scale: a reward model trained on rated preferences, and
rejection sampling (best-of-K) by it, on tasks whose answers are exactly checkable.

Llama 2 (section 3.2.2, Table 8 and Figure 6) reports a reward model more accurate on pairs its
annotators rated "significantly better" than on "slightly better" ones, and (section 3.2.3,
Figure 7) that the best of K samples by the reward model improves with K. This script checks both
through herd's own code (`herd rm`'s trainer objective, `herd rm eval`'s evaluation,
`herd.generate(..., num_samples=K)` as `herd best-of-n` samples):

1. The SFT model of experiments/post_training.py (same tasks: add two numbers, reverse a word,
   write it in capitals; pretrained 1,000 steps, then SFT on conversations with 30% careless
   answers), reused from its --out folder when finished there.
2. Rated preference pairs, on policy: for each training prompt, --rm-samples replies sampled at
   temperature 1 from the SFT model, plus the correct answer. Each reply's quality is how close
   it is to the answer (1 - edit distance / the longer length; 1 for the exact answer). Pairs of
   replies whose qualities differ are rated by the gap, as annotators rate how much better one
   is: >= 0.6 significantly better, >= 0.35 better, >= 0.15 slightly better, below that
   negligibly better. Held-out pairs come from held-out prompts (words and sums in no training
   text).
3. `herd rm` from the SFT checkpoint (score head), Llama 2's small margins, two epochs at lr 1e-3
   (a small model needs more than the paper's one epoch at 1e-5); accuracy per rating on the
   held-out pairs (`evaluate_pairs`) and the score-difference plot.
4. Best-of-K on held-out prompts: 16 samples per prompt at temperature 1 from one shared prefill;
   for K in 1, 2, 4, 8, 16 the first K samples, and the one the reward model scores highest:
   its exact match, against a random sample's (K = 1) and the oracle's (any of the K right).
   OUT/best_of_k.png plots the three against K.

    .venv/bin/python experiments/best_of_k.py     # ~20 minutes on 2 CPU cores (6 after
                                                  # experiments/post_training.py in the same --out)
    .venv/bin/python experiments/best_of_k.py --quick         # a smoke test, about a minute

Measured: docs/post_training.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import post_training as pt  # the sibling script, as a library
import torch

from herd.checkpoint.convert import load
from herd.errors import HerdError
from herd.posttrain.best_of_n import sample_responses, score_responses
from herd.posttrain.reward_cli import evaluate_pairs, plot_differences
from herd.posttrain.reward_data import load_reward_pairs
from herd.posttrain.reward_run import RM_DEFAULTS, rm_data
from herd.tokenizer import load_tokenizer

RATING_GAPS = ((0.6, "significantly better"), (0.35, "better"), (0.15, "slightly better"))
KS = (1, 2, 4, 8, 16)


def quality(text: str, answer: str) -> float:
    """1 for the exact answer, else 1 - Levenshtein distance / the longer length (>= 0)."""
    if text == answer:
        return 1.0
    prev = list(range(len(answer) + 1))
    for i, a in enumerate(text, start=1):
        row = [i]
        for j, b in enumerate(answer, start=1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a != b)))
        prev = row
    return max(0.0, 1.0 - prev[-1] / max(len(text), len(answer), 1))


def rating(gap: float) -> str:
    return next((name for low, name in RATING_GAPS if gap >= low), "negligibly better")


def rated_pairs(model, tok, asked: list[tuple[str, str]], samples: int, seed: int) -> list[dict]:
    """Preference rows over the sampled replies and the answer, rated by their quality gap."""
    drawn = pt.replies(model, tok, [p for p, _ in asked], 16, samples, 1.0, seed)
    rows = []
    for (prompt, answer), got in zip(asked, drawn, strict=True):
        candidates = sorted({text for text, _ in got if text} | {answer})
        scored = [(quality(c, answer), c) for c in candidates]
        for i, (qa, a) in enumerate(scored):
            for qb, b in scored[i + 1 :]:
                if qa == qb:
                    continue
                (q_hi, hi), (q_lo, lo) = sorted([(qa, a), (qb, b)], reverse=True)
                rows.append(
                    {
                        "prompt": [{"role": "user", "content": prompt}],
                        "chosen": [{"role": "assistant", "content": hi}],
                        "rejected": [{"role": "assistant", "content": lo}],
                        "rating": rating(q_hi - q_lo),
                    }
                )
    return rows


def asked_prompts(args, items: dict, split: str, n_per_task: int, seed: int):
    rng = random.Random(seed)
    out = []
    for _task, (kind, make) in pt.TASKS.items():
        pool = list(items[kind][split])
        rng.shuffle(pool)
        out += [make(item)[:2] for item in pool[:n_per_task]]
    return out


def train_reward_model(args, out: Path, sft: Path, pairs: Path) -> Path:
    """`herd rm --model.checkpoint SFT --data.path PAIRS --rm.margin small` through its code."""
    from herd.posttrain.sft import load_stage_config
    from herd.train.trainer import Trainer

    run_dir = out / "rm"
    marker = run_dir / "done.json"
    if marker.is_file():
        print(f"reward model: reusing {run_dir}")
        return Path(json.loads(marker.read_text())["checkpoint"])
    overrides = {
        **pt.train_overrides(args, 0, args.rm_lr, run_dir),
        "model.checkpoint": str(sft),
        "data.path": str(pairs),
        "data.val_fraction": "0",
        "rm.margin": args.rm_margin,
        "rm.epochs": str(args.rm_epochs),
        "optim.warmup_steps": "-1",
    }
    run = load_stage_config(None, overrides, RM_DEFAULTS)
    data = rm_data(run)
    steps = run.train.steps  # rm.epochs over the pairs, resolved by rm_data
    run.train.eval_every = run.train.checkpoint_every = steps
    run.train.log_every = max(1, steps // 10)
    print(f"reward model: {steps} steps in {run_dir}")
    Trainer(run, run_dir, data=data).fit(show_progress=not args.quiet)
    checkpoint = pt.finished(run_dir, steps)
    marker.write_text(json.dumps({"checkpoint": str(checkpoint)}) + "\n")
    return checkpoint


def best_of_k(args, sft: Path, rm: Path, asked) -> dict:
    """Exact match of the reward model's pick among the first K of 16 samples, of a random
    sample, and of the oracle, for each K."""
    policy, tok = load(sft).eval(), load_tokenizer(sft)
    reward = load(rm).eval(), load_tokenizer(rm)
    n = max(KS)
    picked = {k: 0 for k in KS}
    oracle = {k: 0 for k in KS}
    random_hit = 0.0
    for i, (prompt, answer) in enumerate(asked):
        # as `herd best-of-n` samples and scores (an empty reply scores -inf, never picked)
        messages = [{"role": "user", "content": prompt}]
        texts = sample_responses(policy, tok, messages, n, args.max_new_tokens, 1.0, 1.0,
                                 args.seed + i)  # fmt: skip
        scores = score_responses(reward, messages, texts, n)
        right = [t == answer for t in texts]
        random_hit += sum(right) / n
        for k in KS:
            best = max(range(k), key=scores.__getitem__)
            picked[k] += right[best]
            oracle[k] += any(right[:k])
    m = len(asked)
    return {
        "prompts": m,
        "random_sample": random_hit / m,
        "best_of_k": {k: picked[k] / m for k in KS},
        "oracle": {k: oracle[k] / m for k in KS},
    }


def plot_best_of_k(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(KS, [result["best_of_k"][k] for k in KS], "o-", label="best of K by the reward model")
    ax.plot(KS, [result["oracle"][k] for k in KS], "s--", label="oracle: any of the K right")
    ax.axhline(result["random_sample"], color="grey", ls=":", label="one random sample")
    ax.set_xscale("log", base=2)
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.set_xlabel("samples per prompt (K)")
    ax.set_ylabel("held-out exact match")
    ax.set_title("rejection sampling on held-out prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/post_training", help="folder (shared with post_training)")
    p.add_argument("--rm-prompts", type=int, default=1000, help="training prompts per task")
    p.add_argument("--rm-samples", type=int, default=8, help="replies sampled per RM prompt")
    p.add_argument("--rm-val-prompts", type=int, default=60, help="held-out prompts per task")
    p.add_argument("--rm-lr", type=float, default=1e-3, help="reward model peak lr")
    p.add_argument("--rm-epochs", type=float, default=2.0, help="passes over the pairs")
    p.add_argument("--rm-margin", default="small", help="margin table: none, small, large")
    p.add_argument("--bok-prompts", type=int, default=60, help="held-out prompts per task")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    args = p.parse_args(argv)
    base = pt.parse_args(["--out", args.out, *(["--quick"] if args.quick else [])])
    for key, value in vars(base).items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if args.quick:
        args.rm_prompts, args.rm_val_prompts, args.bok_prompts = 8, 4, 3
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    items, corpus, tok_dir = pt.write_inputs(args, out)
    start, _ = pt.pretrain(args, tok_dir, corpus, out)
    sft, _ = pt.sft(args, out, "pretrained", start)

    pairs_path, val_path = out / "rm-pairs.jsonl", out / "rm-val-pairs.jsonl"
    if not val_path.is_file():
        model, tok = load(sft).eval(), load_tokenizer(sft)
        train_asked = asked_prompts(args, items, "train", args.rm_prompts, args.seed + 10)
        val_asked = asked_prompts(args, items, "held_out", args.rm_val_prompts, args.seed + 11)
        for path, asked, seed in ((pairs_path, train_asked, 1), (val_path, val_asked, 2)):
            made = rated_pairs(model, tok, asked, args.rm_samples, args.seed + seed)
            path.write_text("".join(json.dumps(r) + "\n" for r in made), "utf-8")
    rm = train_reward_model(args, out, sft, pairs_path)

    reward, rm_tok = load(rm).eval(), load_tokenizer(rm)
    val = load_reward_pairs(rm_tok, val_path, args.seq_len, args.rm_margin).examples
    accuracy = evaluate_pairs(reward, rm_tok, val, 16)
    plot_differences(accuracy, out / "rm_score_differences.png")
    asked = asked_prompts(args, items, "held_out", args.bok_prompts, args.seed + 12)
    bok = best_of_k(args, sft, rm, asked)
    plot_best_of_k(bok, out / "best_of_k.png")

    lines = ["| rating | held-out pairs | RM accuracy |", "|---|---:|---:|"]
    for name, level in accuracy["levels"].items():
        lines.append(f"| {name.replace('_', ' ')} | {level['pairs']} | {level['accuracy']:.3f} |")
    lines.append(f"| all | {accuracy['pairs']} | {accuracy['accuracy']:.3f} |")
    lines += ["", "| K | best of K by the RM | oracle (any right) |", "|---:|---:|---:|"]
    for k in KS:
        lines.append(f"| {k} | {bok['best_of_k'][k]:.3f} | {bok['oracle'][k]:.3f} |")
    lines.append(
        f"\nOne random sample: {bok['random_sample']:.3f} exact match on {bok['prompts']} "
        f"held-out prompts. {(time.perf_counter() - began) / 60:.1f} minutes."
    )
    report = "\n".join(lines)
    print("\n" + report)
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("quiet", "threads")},
        "rm_accuracy": {k: v for k, v in accuracy.items() if k != "levels"},
        "rm_accuracy_by_rating": {
            name: {k: v for k, v in level.items() if k != "differences"}
            for name, level in accuracy["levels"].items()
        },
        "best_of_k": bok,
    }
    (out / "best_of_k.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "best_of_k.md").write_text(report + "\n")
    print(
        f"wrote {out / 'best_of_k.json'}, {out / 'best_of_k.md'}, best_of_k.png, rm_score_differences.png"
    )
    return summary


if __name__ == "__main__":
    try:
        main()
    except HerdError as e:
        sys.exit(f"error: {e}")
