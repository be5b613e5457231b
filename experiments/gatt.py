"""Ghost Attention at toy scale: does fine-tuning on `herd gatt` data make a small chat model keep
following a system instruction given once, at turns 2, 4 and 6, far more often than the same
model fine-tuned as long without it? (Issue 22, study item 4; Llama 2 section 3.3, Table 30.)

The instruction is checkable by rule: "Answer in capital letters." Every reply is a word task
whose plain answer is exact ("Repeat the word kelp." -> "kelp", "Spell kelp." -> "k e l p"), so
a reply follows the instruction when it equals the answer in capitals ("KELP", "K E L P").

    .venv/bin/python experiments/gatt.py --out runs/gatt            # minutes on 2 CPU cores
    .venv/bin/python experiments/gatt.py --out runs/gatt --quick    # seconds: a smoke test

Steps:
1. Words: random lowercase strings of 3-5 letters; a held-out share appears in no training row.
2. Base SFT conversations (the skill and the instruction, never a system instruction kept over
   several turns): a third single-turn with the instruction as system message; a sixth of 1-6
   turns with the instruction appended to every user turn; the rest 1-6 turns without it (plain
   answers). A byte-level BPE (`herd.vocab.bpe.train_bpe`, Llama 3 chat format) on their text.
3. `base`: `herd sft` (its code) from a random dim-128, 4-layer model on those conversations.
4. `herd gatt` (the command) with `base` on 6-turn dialogues of training words: the instruction
   appended to every user turn while sampling, kept as the system message in the rows, earlier
   replies with "weight": 0; `--every-turn`, so each turn's sample is trained at its depth.
5. Two continuations of `base` for the same steps: `base+sft` on the base conversations again,
   `base+gatt` on the base conversations plus the GAtt rows.
6. Each model answers held-out 6-turn dialogues greedily, its own replies kept as context, with
   the instruction as system message (the share of replies in capitals at each turn) and without
   it (the share of plain answers: the instruction is followed, not capitals always written).

Results on stdout and in OUT/results.json; measured: docs/post_training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as experiments/post_training.py

import torch

from herd.checkpoint.convert import load
from herd.checkpoint.io import save_herd_folder
from herd.cli import main as herd_main
from herd.generation import generate_batch
from herd.model.families import build_model
from herd.posttrain.sft import SFT_DEFAULTS, load_stage_config, sft_data
from herd.tokenizer import load_tokenizer
from herd.train.checkpoint import list_checkpoints
from herd.train.config import load_run_config
from herd.train.trainer import Trainer
from herd.vocab.bpe import train_bpe

INSTRUCTION = "Answer in capital letters."
QUICK = {"words": 120, "base_rows": 200, "gatt_dialogues": 20, "eval_dialogues": 8,
         "base_steps": 8, "extra_steps": 8, "dim": 64, "n_layers": 2}  # fmt: skip


def task(word: str, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return f"Repeat the word {word}.", word
    return f"Spell {word}.", " ".join(word)


def turns(words: list[str], rng: random.Random, n: int) -> list[tuple[str, str]]:
    return [task(rng.choice(words), rng) for _ in range(n)]


def conversation(pairs, system: bool, appended: bool) -> list[dict]:
    """Messages: answers in capitals when the instruction is given (system or appended)."""
    messages = [{"role": "system", "content": INSTRUCTION}] if system else []
    for q, a in pairs:
        q = f"{q}\n\n{INSTRUCTION}" if appended else q
        messages += [{"role": "user", "content": q},
                     {"role": "assistant", "content": a.upper() if system or appended else a}]  # fmt: skip
    return messages


def base_rows(words: list[str], n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        kind = rng.random()
        if kind < 1 / 3:
            rows.append(conversation(turns(words, rng, 1), system=True, appended=False))
        elif kind < 1 / 2:
            rows.append(conversation(turns(words, rng, rng.randint(1, 6)), False, True))
        else:
            rows.append(conversation(turns(words, rng, rng.randint(1, 6)), False, False))
    return [{"messages": m} for m in rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def fine_tune(args, start: Path, data: Path, steps: int, run_dir: Path) -> tuple[Path, dict]:
    """`herd sft --model.checkpoint START --data.path DATA ...` through its code (reused when
    finished)."""
    final = run_dir / "checkpoints" / f"step-{steps:08d}"
    if final not in list_checkpoints(run_dir / "checkpoints"):
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = {
            "model.checkpoint": str(start), "data.path": str(data), "data.seq_len": "512",
            "data.batch_size": str(args.batch_size), "data.val_fraction": "0",
            "data.seed": str(args.seed), "train.seed": str(args.seed), "train.steps": str(steps),
            "train.device": "cpu", "train.dtype": "float32", "train.log_every": "10",
            "train.checkpoint_every": str(steps), "train.keep_checkpoints": "1",
            "optim.lr": str(args.lr), "optim.warmup_steps": str(max(1, steps // 20)),
            "train.out": str(run_dir),
        }  # fmt: skip
        run = load_stage_config(None, overrides, SFT_DEFAULTS)
        t0 = time.perf_counter()
        last = Trainer(run, run_dir, data=sft_data(run)).fit(show_progress=not args.quiet)
        summary = {"loss": last.get("loss"), "seconds": round(time.perf_counter() - t0, 1)}
        (run_dir / "summary.json").write_text(json.dumps(summary) + "\n")
    return final, json.loads((run_dir / "summary.json").read_text())


def in_case(reply: str, upper: bool) -> bool:
    """The rule: the reply has letters and all of them are capitals (`upper`) or all small."""
    letters = [c for c in reply if c.isalpha()]
    return bool(letters) and all(c.isupper() == upper for c in letters)


@torch.inference_mode()
def follow_rates(checkpoint: Path, dialogues: list, system: bool) -> dict[str, list[float]]:
    """Per turn, over greedy replies in dialogues the model continues with its own replies: the
    share that follow the rule (`system`: the instruction given as system message, the reply in
    capitals; else no instruction, the reply in small letters) and the share that are also the
    exact answer in that case."""
    model, tok = load(checkpoint).eval(), load_tokenizer(checkpoint)
    stops = set(tok.stop_ids)
    histories = [[{"role": "system", "content": INSTRUCTION}] if system else [] for _ in dialogues]
    n_turns = len(dialogues[0])
    rule, exact = [0] * n_turns, [0] * n_turns
    for t in range(n_turns):
        prompts = []
        for h, pairs in zip(histories, dialogues, strict=True):
            h.append({"role": "user", "content": pairs[t][0]})
            prompts.append(tok.encode_dialog(h, add_generation_prompt=True).ids)
        gens = [torch.Generator() for _ in prompts]
        sampled = generate_batch(model, prompts, 24, 0.0, stop_ids=sorted(stops), generators=gens)
        for h, pairs, ids in zip(histories, dialogues, sampled, strict=True):
            reply = tok.decode([t for t in ids if t not in stops], skip_special=True).strip()
            answer = pairs[t][1].upper() if system else pairs[t][1]
            rule[t] += in_case(reply, upper=system)
            exact[t] += reply == answer
            h.append({"role": "assistant", "content": reply or "..."})
    n = len(dialogues)
    return {"rule": [x / n for x in rule], "exact": [x / n for x in exact]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gatt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--words", type=int, default=2000)
    p.add_argument("--held-out", type=float, default=0.1)
    p.add_argument("--base-rows", type=int, default=4000)
    p.add_argument("--gatt-dialogues", type=int, default=400)
    p.add_argument("--eval-dialogues", type=int, default=100)
    p.add_argument("--base-steps", type=int, default=400)
    p.add_argument("--extra-steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vocab-size", type=int, default=320, help="small: words stay split in letters")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update({k: v for k, v in QUICK.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    words = sorted({"".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 5)))
                    for _ in range(args.words)})  # fmt: skip
    rng.shuffle(words)
    n_held = int(len(words) * args.held_out)
    held, train = words[:n_held], words[n_held:]

    base = write_jsonl(out / "data" / "base" / "base.jsonl", base_rows(train, args.base_rows, rng))
    text = "\n".join(m["content"] for r in base_rows(train, 500, rng) for m in r["messages"])
    (out / "corpus.txt").write_text(text, "utf-8")
    tok_dir = out / "tok"
    if not tok_dir.exists():
        train_bpe([out / "corpus.txt"], args.vocab_size, tok_dir, show_progress=False)
    tok = load_tokenizer(tok_dir)
    init = out / "random_init"
    if not (init / "config.json").exists():
        run = load_run_config(None, {"model.preset": "demo", "model.dim": str(args.dim),
                                     "model.n_layers": str(args.n_layers), "model.n_heads": "4",
                                     "model.n_kv_heads": "4", "model.ffn_dim": str(3 * args.dim),
                                     "model.max_seq_len": "512"})  # fmt: skip
        config = run.model_config(vocab_size=tok.vocab_size)
        model = build_model(config, seed=args.seed)
        save_herd_folder(config, model.state_dict(), init, tokenizer=tok.files(), overwrite=True)
    record: dict = {"args": vars(args)}

    base_ckpt, record["base"] = fine_tune(args, init, base, args.base_steps, out / "base")
    # GAtt data: 6-turn dialogues of training words (their replies are placeholders: resampled)
    dialogues = [conversation(turns(train, rng, 6), False, False)
                 for _ in range(args.gatt_dialogues)]  # fmt: skip
    write_jsonl(out / "dialogues.jsonl", [{"messages": m} for m in dialogues])
    (out / "instructions.txt").write_text(INSTRUCTION + "\n", "utf-8")
    gatt = out / "data" / "with_gatt" / "gatt.jsonl"
    timing = out / "gatt_seconds.txt"
    if not timing.exists():  # the rows depend only on the seed: a rerun reuses them
        t0 = time.perf_counter()
        code = herd_main([
            "gatt", "--dialogues", str(out / "dialogues.jsonl"), "--instructions",
            str(out / "instructions.txt"), "--model", str(base_ckpt), "--out", str(gatt),
            "--every-turn", "--temperature", "0.7", "--max-new-tokens", "24", "--batch-size",
            "16", "--seed", str(args.seed), "--device", "cpu", "--overwrite",
        ])  # fmt: skip
        assert code == 0
        timing.write_text(f"{time.perf_counter() - t0:.1f}\n")
    rows = [json.loads(x)["messages"] for x in gatt.read_text("utf-8").splitlines()]
    caps = [in_case(r[-1]["content"], upper=True) for r in rows]
    earlier = [in_case(m["content"], True) for r in rows for m in r if m.get("weight") == 0]
    record["gatt_data"] = {
        "rows": len(rows),
        "seconds": float(timing.read_text()),
        "trained_replies_in_capitals": sum(caps) / max(1, len(caps)),
        "earlier_replies_in_capitals": sum(earlier) / max(1, len(earlier)),
    }
    shutil.copy(base, gatt.parent / "base.jsonl")

    held_dialogues = [turns(held, rng, 6) for _ in range(args.eval_dialogues)]
    arms = {"base": base_ckpt}
    arms["base+sft"], record["base+sft"] = fine_tune(args, base_ckpt, base, args.extra_steps,
                                                     out / "base+sft")  # fmt: skip
    arms["base+gatt"], record["base+gatt"] = fine_tune(args, base_ckpt, gatt.parent,
                                                       args.extra_steps, out / "base+gatt")  # fmt: skip
    record["results"] = {}
    lines = [
        "| model | capitals with the system instruction, turns 1-6 | exact, turns 1-6 "
        "| small letters without it, turns 1-6 |",
        "|---|---|---|---|",
    ]
    for name, ckpt in arms.items():
        with_inst = follow_rates(ckpt, held_dialogues, system=True)
        without = follow_rates(ckpt, held_dialogues, system=False)
        record["results"][name] = {"instruction": with_inst, "no_instruction": without}
        fmt = lambda xs: ", ".join(f"{x:.0%}" for x in xs)  # noqa: E731
        lines.append(f"| {name} | {fmt(with_inst['rule'])} | {fmt(with_inst['exact'])} "
                     f"| {fmt(without['rule'])} |")  # fmt: skip
    print("\n" + "\n".join(lines))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("base", "base+sft", "base+gatt", "gatt_data")}))
    return record


if __name__ == "__main__":
    main()
