"""The Llama 2-Chat loop at toy scale: a reward model trained on rated preferences, and
rejection sampling (best-of-K) by it, on tasks whose answers are exactly checkable.

Llama 2 (section 3.2.2, Table 8 and Figure 6) reports a reward model more accurate on pairs its
annotators rated "significantly better" than on "slightly better" ones, and (section 3.2.3,
Figure 7) that the best of K samples by the reward model improves with K. This script checks both
through herd's own code (`herd rm`'s trainer objective, `herd rm eval`'s evaluation,
`herd.generate(..., num_samples=K)` as `herd best-of-n` samples), on one of two task sets:

- lists (default): experiments/best_of_k_lists.py, "Name three trees other than oak and pine.",
  many right replies, checked by matching words: a check a small reward model can learn;
- exact: experiments/post_training.py's tasks (add two numbers, reverse a word, write it in
  capitals), one right answer each, where telling it from a near miss takes doing the task.

1. An SFT model: pretrained 1,000 steps on the task set's prose, then SFT on conversations of
   which a share are careless (`--list-noise` for lists; post_training's 30% slips for exact,
   whose --out folder and models it shares).
2. Rated preference pairs, on policy: for each training prompt, --rm-samples replies sampled at
   temperature 1 from the SFT model, plus a right one, graded by the task's quality (lists: the
   share of allowed distinct words; exact: 1 - edit distance / the longer length). Pairs of
   replies whose qualities differ are rated by the gap, as annotators rate how much better one
   is: >= 0.6 significantly better, >= 0.35 better, >= 0.15 slightly better, below that
   negligibly better; at most --rm-pairs-per-prompt per prompt. Held-out pairs come from
   held-out prompts (in no training text).
3. `herd rm` from the SFT checkpoint (score head), Llama 2's small margins, lr 1e-3 (a small
   model needs more than the paper's one epoch at 1e-5); accuracy per rating on the held-out
   pairs (`evaluate_pairs`) and the score-difference plot.
4. Best-of-K on held-out prompts: 32 samples per prompt at temperature 1 from one shared
   prefill; for K in 1..32 the mean over every K-subset of the reply the reward model scores
   highest (`expected_pick`): how often it is right and its mean quality, against a random
   sample (K = 1) and the oracle (any of the K right). OUT/best_of_k.png plots them against K.

    .venv/bin/python experiments/best_of_k.py                # lists; ~15 minutes on 2 CPU cores
    .venv/bin/python experiments/best_of_k.py --task exact   # after experiments/post_training.py
    .venv/bin/python experiments/best_of_k.py --quick        # a smoke test, seconds

Measured: docs/post_training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import best_of_k_lists as lists
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
KS = (1, 2, 4, 8, 16, 32)


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


def exact_prompts(items: dict, split: str, n: int, seed: int) -> list[tuple[str, str]]:
    """n (prompt, answer) of `split`, the post-training tasks in equal shares."""
    rng = random.Random(seed)
    out = []
    for _task, (kind, make) in pt.TASKS.items():
        pool = list(items[kind][split])
        rng.shuffle(pool)
        out += [make(item)[:2] for item in pool[: n // len(pt.TASKS)]]
    return out


# A task set: its inputs (prompts by split, pretraining prose, OUT/sft.jsonl, BPE), n prompts of a
# split as (prompt, key), a reply's graded quality against the key, whether it is right, and a
# right reply. "exact": the post-training study's tasks, one right answer each; "lists":
# experiments/best_of_k_lists.py, many right answers, checkable by matching words.
TASK_SETS = {
    "exact": SimpleNamespace(
        write_inputs=pt.write_inputs,
        asked_prompts=exact_prompts,
        quality=quality,
        right=str.__eq__,
        answer=lambda key, rng: key,
    ),
    "lists": lists,
}


def rated_pairs(args, task, model, tok, asked: list, samples: int, seed: int) -> list[dict]:
    """Preference rows over the sampled replies and a right one, rated by their quality gap; at
    most --rm-pairs-per-prompt of a prompt's pairs (drawn at random), as annotators compare a few
    responses per prompt."""
    drawn = pt.replies(model, tok, [p for p, _ in asked], 16, samples, 1.0, seed)
    rng = random.Random(seed)
    rows = []
    for (prompt, key), got in zip(asked, drawn, strict=True):
        candidates = sorted({text for text, _ in got if text} | {task.answer(key, rng)})
        scored = [(task.quality(c, key), c) for c in candidates]
        pairs = [(a, b) for i, a in enumerate(scored) for b in scored[i + 1 :] if a[0] != b[0]]
        if args.rm_pairs_per_prompt and len(pairs) > args.rm_pairs_per_prompt:
            pairs = rng.sample(pairs, args.rm_pairs_per_prompt)
        for a, b in pairs:
            (q_hi, hi), (q_lo, lo) = sorted([a, b], reverse=True)
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": hi}],
                    "rejected": [{"role": "assistant", "content": lo}],
                    "rating": rating(q_hi - q_lo),
                }
            )
    return rows


def train_reward_model(args, out: Path, sft: Path, pairs: Path) -> Path:
    """`herd rm --model.checkpoint SFT --data.path PAIRS --rm.margin small` through its code."""
    from herd.posttrain.sft import load_stage_config
    from herd.train.trainer import Trainer

    run_dir = out / "rm"
    marker = run_dir / "done.json"
    settings = {"margin": args.rm_margin, "epochs": args.rm_epochs, "lr": args.rm_lr}
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("settings") == settings:
            print(f"reward model: reusing {run_dir}")
            return run_dir / done["checkpoint"]
        print(f"reward model: {run_dir} was trained with other settings; training again")
    overrides = {
        **pt.train_overrides(args, 0, args.rm_lr, run_dir),
        "model.checkpoint": str(sft),
        "data.path": str(pairs),
        "data.val_fraction": "0",
        "rm.margin": args.rm_margin,
        "rm.epochs": str(args.rm_epochs),
        "optim.warmup_steps": "-1",
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    run = load_stage_config(None, overrides, RM_DEFAULTS)
    data = rm_data(run)
    steps = run.train.steps  # rm.epochs over the pairs, resolved by rm_data
    run.train.eval_every = run.train.checkpoint_every = steps
    run.train.log_every = max(1, steps // 10)
    print(f"reward model: {steps} steps in {run_dir}")
    Trainer(run, run_dir, data=data).fit(show_progress=not args.quiet)
    checkpoint = pt.finished(run_dir, steps)
    marker.write_text(
        json.dumps({"checkpoint": str(checkpoint.relative_to(run_dir)), "settings": settings})
        + "\n"
    )
    return checkpoint


def expected_pick(scores: list[float], values: list[float], k: int) -> float:
    """The mean value of the top-scored reply over every K-subset of the n replies: the reply
    ranked j-th (from 0) is the subset's best in C(n - 1 - j, K - 1) of the C(n, K) subsets. The
    estimate of best-of-K from n >= K samples with the least variance (no subset is favoured)."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: -scores[i])
    return sum(math.comb(n - 1 - j, k - 1) * values[i] for j, i in enumerate(order)) / math.comb(
        n, k
    )


def best_of_k(args, task, sft: Path, rm: Path, asked) -> dict:
    """Over held-out prompts, for each K: how often the reply the reward model scores highest
    among K samples is right, and its mean quality; the oracle's rate (any of the K right); a
    random sample's. K samples are every K-subset of max(KS) samples (`expected_pick`)."""
    policy, tok = load(sft).eval(), load_tokenizer(sft)
    reward = load(rm).eval(), load_tokenizer(rm)
    n = max(KS)
    picked = {k: 0.0 for k in KS}
    picked_quality = {k: 0.0 for k in KS}
    oracle = {k: 0.0 for k in KS}
    random_hit = random_quality = 0.0
    for i, (prompt, key) in enumerate(asked):
        # as `herd best-of-n` samples and scores (an empty reply scores -inf, never picked)
        messages = [{"role": "user", "content": prompt}]
        texts = sample_responses(policy, tok, messages, n, args.max_new_tokens, 1.0, 1.0,
                                 args.seed + i)  # fmt: skip
        scores = score_responses(reward, messages, texts, n)
        right = [float(task.right(t, key)) for t in texts]
        graded = [task.quality(t, key) for t in texts]
        random_hit += sum(right) / n
        random_quality += sum(graded) / n
        for k in KS:
            picked[k] += expected_pick(scores, right, k)
            picked_quality[k] += expected_pick(scores, graded, k)
            oracle[k] += 1 - math.comb(n - int(sum(right)), k) / math.comb(n, k)
    m = len(asked)
    return {
        "prompts": m,
        "samples": n,
        "random_sample": random_hit / m,
        "random_sample_quality": random_quality / m,
        "best_of_k": {k: picked[k] / m for k in KS},
        "best_of_k_quality": {k: picked_quality[k] / m for k in KS},
        "oracle": {k: oracle[k] / m for k in KS},
    }


def plot_best_of_k(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(KS, [result["best_of_k"][k] for k in KS], "o-", label="best of K by the reward model")
    ax.plot(KS, [result["best_of_k_quality"][k] for k in KS], "^-", alpha=0.6,
            label="its mean quality (share of the reply right)")  # fmt: skip
    ax.plot(KS, [result["oracle"][k] for k in KS], "s--", label="oracle: any of the K right")
    ax.axhline(result["random_sample"], color="grey", ls=":", label="one random sample")
    ax.set_xscale("log", base=2)
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.set_xlabel("samples per prompt (K)")
    ax.set_ylabel("held-out prompts right")
    ax.set_title(f"rejection sampling on held-out prompts ({result['task']} tasks)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASK_SETS), default="lists",
                   help="lists: name N words of a kind but the listed ones (many right replies, "
                   "checked by matching words); exact: the post-training tasks (add, reverse, "
                   "capitals: one right answer)")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="folder (default runs/best_of_k; --task exact: runs/post_training, shared "
                   "with experiments/post_training.py)")  # fmt: skip
    p.add_argument("--rm-prompts", type=int, default=3000, help="training prompts for RM pairs")
    p.add_argument("--rm-samples", type=int, default=8, help="replies sampled per RM prompt")
    p.add_argument("--rm-val-prompts", type=int, default=180, help="held-out prompts for RM pairs")
    p.add_argument("--rm-lr", type=float, default=1e-3, help="reward model peak lr")
    p.add_argument("--rm-epochs", type=float, default=None,
                   help="passes over the pairs (default: lists 3, exact 2)")  # fmt: skip
    p.add_argument("--rm-pairs-per-prompt", type=int, default=None,
                   help="keep at most this many rated pairs per prompt (default: lists 12, "
                   "exact all)")  # fmt: skip
    p.add_argument("--rm-margin", default="small", help="margin table: none, small, large")
    p.add_argument("--bok-prompts", type=int, default=180, help="held-out best-of-K prompts")
    p.add_argument("--list-noise", type=float, default=0.5,
                   help="lists: share of SFT replies with one mistake")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = "runs/post_training" if args.task == "exact" else "runs/best_of_k"
    base = pt.parse_args(["--out", args.out, *(["--quick"] if args.quick else [])])
    for key, value in vars(base).items():
        if not hasattr(args, key):
            setattr(args, key, value)
    lists_run = args.task == "lists"
    if lists_run:  # a BPE with every word one token; the exact tasks keep letters
        args.vocab_size, args.sft_noise = 768, args.list_noise
    if args.rm_epochs is None:
        args.rm_epochs = 3.0 if lists_run else 2.0
    if args.rm_pairs_per_prompt is None:
        args.rm_pairs_per_prompt = 12 if lists_run else 0
    if args.quick:
        args.rm_prompts, args.rm_val_prompts, args.bok_prompts = 24, 12, 9
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    task = TASK_SETS[args.task]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    items, corpus, tok_dir = task.write_inputs(args, out)
    start, _ = pt.pretrain(args, tok_dir, corpus, out)
    sft, _ = pt.sft(args, out, "pretrained", start)

    pairs_path, val_path = out / "rm-pairs.jsonl", out / "rm-val-pairs.jsonl"
    if not val_path.is_file():
        model, tok = load(sft).eval(), load_tokenizer(sft)
        train_asked = task.asked_prompts(items, "train", args.rm_prompts, args.seed + 10)
        val_asked = task.asked_prompts(items, "held_out", args.rm_val_prompts, args.seed + 11)
        for path, asked, seed in ((pairs_path, train_asked, 1), (val_path, val_asked, 2)):
            made = rated_pairs(args, task, model, tok, asked, args.rm_samples, args.seed + seed)
            path.write_text("".join(json.dumps(r) + "\n" for r in made), "utf-8")
    rm = train_reward_model(args, out, sft, pairs_path)

    reward, rm_tok = load(rm).eval(), load_tokenizer(rm)
    val = load_reward_pairs(rm_tok, val_path, args.seq_len, args.rm_margin).examples
    accuracy = evaluate_pairs(reward, rm_tok, val, 16)
    plot_differences(accuracy, out / "rm_score_differences.png")
    asked = task.asked_prompts(items, "held_out", args.bok_prompts, args.seed + 12)
    bok = {"task": args.task, **best_of_k(args, task, sft, rm, asked)}
    plot_best_of_k(bok, out / "best_of_k.png")

    lines = ["| rating | held-out pairs | RM accuracy |", "|---|---:|---:|"]
    for name, level in accuracy["levels"].items():
        lines.append(f"| {name.replace('_', ' ')} | {level['pairs']} | {level['accuracy']:.3f} |")
    lines.append(f"| all | {accuracy['pairs']} | {accuracy['accuracy']:.3f} |")
    lines += ["", "| K | best of K by the RM | its quality | oracle (any right) |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for k in KS:
        lines.append(f"| {k} | {bok['best_of_k'][k]:.3f} | {bok['best_of_k_quality'][k]:.3f} "
                     f"| {bok['oracle'][k]:.3f} |")  # fmt: skip
    lines.append(
        f"\nTask set {args.task}; one random sample: {bok['random_sample']:.3f} right on "
        f"{bok['prompts']} held-out prompts ({bok['samples']} samples each). "
        f"{(time.perf_counter() - began) / 60:.1f} minutes."
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
