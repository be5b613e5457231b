"""Reward models on synthetic rated preferences: held-out accuracy per rating level, by margin.

Llama 2 (section 3.2.2, Tables 8 and 28) reports that a reward model is more accurate on pairs
its annotators rated "significantly better" than on "slightly better" ones, and that a margin
term in the ranking loss helps most on the separable pairs. This reproduces both on a task with
a checkable goal, on CPU in a few minutes:

- prompts ask for a cheerful description; a response is 8 words drawn from positive, negative
  and neutral words and "not", and its true quality counts +1 per positive word and −1 per
  negative one, the sign flipped right after "not" (so order matters, not just word counts);
- a pair is two responses of different quality; the gap names the rating: 4 or more
  "significantly better", 3 "better", 2 "slightly better", 1 "negligibly better / unsure";
- `herd rm` trains a reward model (a fresh tiny Llama, its tokenizer a BPE trained on the words)
  with each margin table (none, small, large) on the same pairs, and `herd rm eval` scores the
  held-out pairs.

    python experiments/reward_model.py --out runs/reward_model [--quick]

Writes OUT/results.json (accuracy per level and margin table) and OUT/MARGIN/eval/
score_differences.png; the numbers are in docs/post_training.md (Reward models).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

POSITIVE = ["good", "great", "kind", "happy", "bright", "calm", "warm", "fine"]
NEGATIVE = ["bad", "sad", "cold", "dark", "rude", "dull", "weak", "poor"]
NEUTRAL = ["the", "day", "cat", "tree", "road", "blue", "old", "house", "rain", "walk"]
PROMPTS = ["Describe your day.", "Tell me about the park.", "How was the trip?", "Describe a cat."]
RATINGS = {4: "significantly better", 3: "better", 2: "slightly better", 1: "unsure"}
MODEL = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq_len=64)


def quality(words: list[str]) -> int:
    """+1 per positive word, −1 per negative one, the sign flipped right after "not"."""
    total = 0
    for i, w in enumerate(words):
        sign = -1 if i and words[i - 1] == "not" else 1
        total += sign * ((w in POSITIVE) - (w in NEGATIVE))
    return total


def response(rng: random.Random) -> tuple[str, int]:
    """Eight words and their quality."""
    pools = [POSITIVE, NEGATIVE, NEUTRAL, ["not"]]
    words = [rng.choice(rng.choice(pools)) for _ in range(8)]
    return " ".join(words), quality(words)


def pairs(n: int, seed: int) -> list[dict]:
    """n rated pairs, as many of each rating level as the draw allows (about n / 4 each)."""
    rng = random.Random(seed)
    rows, want = [], {level: n // 4 for level in RATINGS}
    while len(rows) < n:
        (a, qa), (b, qb) = response(rng), response(rng)
        gap = min(abs(qa - qb), 4)
        if gap == 0 or want[gap] == 0:
            continue
        want[gap] -= 1
        chosen, rejected = (a, b) if qa > qb else (b, a)
        rows.append(
            {
                "prompt": rng.choice(PROMPTS),
                "chosen": chosen,
                "rejected": rejected,
                "rating": RATINGS[gap],
            }
        )
    return rows


def start_checkpoint(out: Path) -> Path:
    """A fresh tiny model with a chat tokenizer (BPE on the task's words), as a herd folder."""
    import herd
    from herd.checkpoint.io import save_herd_folder
    from herd.vocab.bpe import train_bpe

    start = out / "start"
    if start.is_dir():
        return start
    corpus = out / "corpus.txt"
    rng = random.Random(1)
    corpus.write_text("\n".join(f"{rng.choice(PROMPTS)} {response(rng)[0]}" for _ in range(2000)))
    tok = herd.load_tokenizer(train_bpe([corpus], 400, out / "tok", show_progress=False))
    config = herd.ModelConfig(vocab_size=tok.vocab_size, **MODEL)
    save_herd_folder(config, herd.build_model(config, seed=0).state_dict(), start, tok.files())
    return start


def run_margin(herd_main, out: Path, start: Path, data: Path, held: Path, margin: str, args):
    """Train with one margin table and evaluate on the held-out pairs; returns the summary."""
    run = out / margin
    final = run / "eval" / "eval.json"
    if not final.is_file():
        flags = {
            "model.checkpoint": start,
            "data.path": data,
            "data.seq_len": 64,
            "data.batch_size": 16,
            "data.val_fraction": 0,
            "rm.margin": margin,
            "rm.epochs": args.epochs,
            "optim.lr": args.lr,
            "train.device": "cpu",
            "train.log_every": 10,
            "train.out": run,
        }
        argv = ["rm", *(t for k, v in flags.items() for t in (f"--{k}", str(v)))]
        if herd_main(argv) != 0:
            raise SystemExit(f"herd rm ({margin}) failed")
        ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
        argv = ["rm", "eval", str(ckpt), "--data", str(held), "--out", str(run / "eval")]
        if herd_main([*argv, "--device", "cpu", "--margin", margin, "--json"]) != 0:
            raise SystemExit(f"herd rm eval ({margin}) failed")
    result = json.loads(final.read_text())
    return {
        "accuracy": result["accuracy"],
        "levels": {k: v["accuracy"] for k, v in result["levels"].items()},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/reward_model"))
    p.add_argument("--quick", action="store_true", help="few pairs, one table: a smoke test")
    p.add_argument("--pairs", type=int, default=4000, help="training pairs (4000)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over them (2)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3)")
    args = p.parse_args(argv)
    import torch

    from herd.cli import main as herd_main

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    held_out = 800
    if args.quick:
        args.pairs, args.epochs, held_out = 64, 1.0, 64
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data, held = out / "train.jsonl", out / "held_out.jsonl"
    if not data.is_file():  # another seed for the held-out pairs (their overlap is reported)
        data.write_text("".join(json.dumps(r) + "\n" for r in pairs(args.pairs, seed=0)))
        held.write_text("".join(json.dumps(r) + "\n" for r in pairs(held_out, seed=1)))
    start = start_checkpoint(out)
    margins = ["none"] if args.quick else ["none", "small", "large"]
    results = {m: run_margin(herd_main, out, start, data, held, m, args) for m in margins}
    seen = [{(r["chosen"], r["rejected"]) for r in map(json.loads, f.read_text().splitlines())}
            for f in (data, held)]  # fmt: skip
    summary = {
        "pairs": args.pairs,
        "held_out": held_out,
        "held_out_also_in_training": len(seen[0] & seen[1]),
        "epochs": args.epochs,
        "lr": args.lr,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    levels = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    print(f"{'margin':<8}" + "".join(f"{k.replace('_', ' '):>22}" for k in levels) + f"{'all':>8}")
    for m, r in results.items():
        cells = "".join(f"{r['levels'].get(k, float('nan')):>22.3f}" for k in levels)
        print(f"{m:<8}{cells}{r['accuracy']:>8.3f}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
