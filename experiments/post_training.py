"""Post-training at toy scale: does `herd sft` teach a small model to answer in the chat format,
correctly and ending its turn, on prompts it never saw; does DPO on pairs whose chosen answer is
correct and rejected one wrong raise that further, and what does Llama 3's NLL term (alpha) do to
the chosen answers' log-probability; how close does LoRA SFT come to full SFT?

Llama 2 (section 3.1) and Llama 3 (sections 4.1, 4.1.4) fine-tune a pretrained model on
conversations with the loss on the assistant's tokens only, then run DPO (beta 0.1) with an NLL
term on the chosen response (alpha 0.2). This script runs that pipeline end to end through herd's
own code on a chat set it generates, whose answers are exactly checkable, and measures on held-out
prompts, greedy decoding in the Llama 3 chat format:
- exact match: the reply (decoded without special tokens, stripped) equals the answer;
- the share of replies that end with <|eot_id|> within --max-new-tokens (the model ends its turn).

    .venv/bin/python experiments/post_training.py            # about 10 minutes on 2 CPU cores
    .venv/bin/python experiments/post_training.py --quick    # seconds: a smoke test

Steps:
1. Tasks (`TASKS`): add two numbers ("What is 13 plus 7?" -> "20"), reverse a word ("Reverse the
   word kelp." -> "plek") and write a word in capital letters ("Write kelp in capital letters."
   -> "KELP"). Words are random lowercase strings of 3-5 letters and the numbers' pairs are drawn
   from 0..--max-operand; a held-out share of words and pairs (--held-out) appears in no training
   text (pretraining prose, SFT conversations, DPO pairs), so held-out exact match measures the
   skill, not a memorised fact.
2. A byte-level BPE (`herd.vocab.bpe.train_bpe`, the Llama 3 special tokens and chat format) on
   prose stating the same operations on the training items ("The word kelp reversed is plek.");
   small enough that words and numbers stay split into letters and digits.
3. Starting points (--starts): a random initialisation (the default) of a dim-128, 4-layer model,
   and optionally the same one pretrained on the prose (`herd data prepare` + `herd train`'s
   code). At the demo preset's size (dim 288, 6 layers, 120 SFT steps) SFT taught the format but
   not the skills and pretraining did not help (docs/post_training.md), so the default is a
   smaller model with more SFT steps and no pretraining.
4. Stages (`STAGES`), each through the herd command's code, from the start or from another stage:
   - sft: `herd sft` on 3,000 conversations of training items, lr 3e-3 (a small model needs far
     more than Llama 3's 1e-5);
   - dpo_a0, dpo_a0.2: `herd dpo` from the SFT result on pairs of distinct training items whose
     chosen answer is correct and rejected one a wrong answer of the same kind (another sum near
     the right one, the word unreversed, one letter changed), beta 0.1, alpha 0 and 0.2, the
     same steps; 10 % of the pairs held out for `val_rewards/*`;
   - lora_sft: the SFT run with LoRA (r 16, all-linear) on the frozen start at a higher lr.
5. Evaluation of each checkpoint on the same held-out prompts (and on as many training prompts,
   to show what is memorised), per task and overall; the DPO runs' metrics read from their
   metrics.jsonl and reference log-probabilities; tables on stdout, OUT/results.json,
   OUT/summary.md.

Measured: docs/post_training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import sys
import time
from pathlib import Path

# See experiments/bidirectionality.py: passive OpenMP waiting keeps 2 threads fast on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from study_cli import parse_study, study_parser

from herd.checkpoint.convert import load
from herd.checkpoint.io import save_herd_folder
from herd.data.shards import prepare
from herd.errors import HerdError
from herd.generation import generate
from herd.model.families import build_model
from herd.posttrain.dpo_run import DPO_DEFAULTS, dpo_data
from herd.posttrain.reference_tables import load_reference_logps, reference_files
from herd.posttrain.sft import SFT_DEFAULTS, load_stage_config, sft_data
from herd.tokenizer import load_tokenizer
from herd.train.checkpoint import list_checkpoints
from herd.train.config import load_run_config
from herd.train.trainer import Trainer
from herd.vocab.bpe import train_bpe

# The sizes --quick substitutes: a test that finishes in well under a minute on two cores; the
# numbers it gives mean nothing.
QUICK = {
    "words": 200,
    "max_operand": 9,
    "pretrain_docs": 40,
    "sft_examples": 120,
    "eval_prompts": 6,
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "ffn_dim": 128,
    "pretrain_steps": 6,
    "sft_steps": 6,
    "dpo_prompts": 60,
    "dpo_steps": 6,
    "batch_size": 4,
    "seq_len": 128,
    "max_new_tokens": 8,
}

# The stages, in order: (name, the stage whose checkpoint it starts from; None: the starting
# point). A stage function takes (args, out, name of its start, the start's checkpoint) and returns
# the checkpoint it wrote and a record of its run; its model is named START+STAGE.
STAGES = (
    ("sft", None),
    ("dpo_a0", "sft"),
    ("dpo_a0.2", "sft"),
    ("lora_sft", None),
)


# --- 1. tasks ----------------------------------------------------------------------------------


def _add(pair: tuple[int, int]) -> tuple[str, str, str]:
    a, b = pair
    return f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}."


def _reverse(word: str) -> tuple[str, str, str]:
    return f"Reverse the word {word}.", word[::-1], f"The word {word} reversed is {word[::-1]}."


def _upper(word: str) -> tuple[str, str, str]:
    return (
        f"Write {word} in capital letters.",
        word.upper(),
        f"The word {word} in capital letters is {word.upper()}.",
    )


# name -> (kind of item it takes, item -> (chat prompt, exact answer, a sentence of prose))
TASKS = {"add": ("pair", _add), "reverse": ("word", _reverse), "upper": ("word", _upper)}


def split_items(args: argparse.Namespace) -> dict[str, dict[str, list]]:
    """Training and held-out words and number pairs; held-out ones appear in no training text."""
    rng = random.Random(args.seed)
    words: set[str] = set()
    while len(words) < args.words:
        n = rng.randint(3, 5)
        words.add("".join(rng.choice(string.ascii_lowercase) for _ in range(n)))
    pairs = [(a, b) for a in range(args.max_operand + 1) for b in range(args.max_operand + 1)]
    items = {}
    for kind, pool in (("word", sorted(words)), ("pair", pairs)):
        pool = list(pool)
        rng.shuffle(pool)
        cut = max(1, round(len(pool) * args.held_out))
        items[kind] = {"held_out": pool[:cut], "train": pool[cut:]}
    return items


def pretraining_corpus(args: argparse.Namespace, items: dict, folder: Path) -> Path:
    """Plain-text documents of sentences about training items only (no chat format)."""
    rng = random.Random(args.seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(args.pretrain_docs):
        sentences = []
        for _ in range(args.sentences_per_doc):
            task = rng.choice(list(TASKS))
            kind, make = TASKS[task]
            sentences.append(make(rng.choice(items[kind]["train"]))[2])
        (folder / f"doc{d:04d}.txt").write_text(" ".join(sentences) + "\n", "utf-8")
    return folder


def slip(task: str, item) -> str:
    """The one systematic mistake each task's careless annotator makes: a sum one too high, the
    word left unreversed, the word left in small letters."""
    if task == "add":
        return str(sum(item) + 1)
    return item


def chat_rows(args: argparse.Namespace, items: dict) -> list[dict]:
    """SFT conversations on training items, the tasks in equal shares; a share (--sft-noise) of
    the answers is the task's `slip`, as written demonstrations carry their writers' mistakes
    (Llama 2 section 3.2.1: people judge which of two answers is better more reliably than they
    write the best one). The SFT model learns the slips with the skill; DPO's pairs, ranked by an
    exact check, are what can remove them."""
    rng = random.Random(args.seed + 2)
    rows = []
    for i in range(args.sft_examples):
        task = list(TASKS)[i % len(TASKS)]
        kind, make = TASKS[task]
        item = rng.choice(items[kind]["train"])
        prompt, answer, _ = make(item)
        if rng.random() < args.sft_noise:
            answer = slip(task, item)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def dpo_items(args: argparse.Namespace, items: dict) -> list[tuple[str, object]]:
    """(task, item) of the prompts DPO samples on: distinct training items, the tasks in equal
    shares (a task with fewer items gives all it has)."""
    rng = random.Random(args.seed + 4)
    per_task = -(-args.dpo_prompts // len(TASKS))
    chosen = {}
    for task, (kind, _) in TASKS.items():
        pool = list(items[kind]["train"])
        rng.shuffle(pool)
        chosen[task] = pool[:per_task]
    return [(task, chosen[task][i]) for i in range(per_task) for task in TASKS
            if i < len(chosen[task])][: args.dpo_prompts]  # fmt: skip


def sampled_preference_rows(
    args: argparse.Namespace, items: dict, checkpoint: Path
) -> tuple[list[dict], dict]:
    """On-policy preference pairs, built as Llama 3 builds its preference data: from responses
    the model being aligned produces (section 4.2.1), ranked here by a checkable property. For
    each prompt of `dpo_items`, the SFT model's greedy reply and --dpo-samples replies sampled at
    temperature 1; if any is wrong (not exactly the answer), the pair is the correct answer
    (chosen) against the model's likeliest mistake (rejected): its greedy reply if that is wrong,
    else its most frequent wrong sample. DPO so pushes down the mistakes the model actually
    makes; prompts it always answers right give no pair. Returns the rows and counts."""
    model = load(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    asked = [(TASKS[task][1](item)[:2]) for task, item in dpo_items(args, items)]
    prompts = [prompt for prompt, _ in asked]
    greedy = replies(model, tok, prompts, args.max_new_tokens)
    sampled = replies(model, tok, prompts, args.max_new_tokens, samples=args.dpo_samples,
                      temperature=1.0, seed=args.seed)  # fmt: skip
    rows, correct, greedy_correct = [], 0, 0
    for (prompt, answer), (first,), samples in zip(asked, greedy, sampled, strict=True):
        correct += sum(text == answer for text, _ in samples)
        greedy_correct += first[0] == answer
        wrong = [text for text, _ in samples if text != answer and text]
        if first[0] != answer and first[0]:
            wrong = [first[0]]
        if wrong:
            mistake = max(wrong, key=wrong.count)  # the first of the most frequent
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": mistake}],
                }
            )
    counts = {
        "prompts": len(asked),
        "greedy_accuracy": greedy_correct / len(asked),
        "samples": len(asked) * args.dpo_samples,
        "sample_accuracy": correct / (len(asked) * args.dpo_samples),
        "pairs": len(rows),
    }
    return rows, counts


def eval_prompts(args: argparse.Namespace, items: dict, split: str) -> dict[str, list]:
    """Per task, up to --eval-prompts (prompt, answer) pairs of distinct items of `split`."""
    rng = random.Random(args.seed + 3)
    out = {}
    for task, (kind, make) in TASKS.items():
        pool = list(items[kind][split])
        rng.shuffle(pool)
        out[task] = [make(item)[:2] for item in pool[: args.eval_prompts]]
    return out


# --- 2-4. tokenizer, starting points, stages ------------------------------------------------------


def model_overrides(args: argparse.Namespace) -> dict[str, str]:
    return {
        "model.preset": "demo",
        "model.dim": str(args.dim),
        "model.n_layers": str(args.n_layers),
        "model.n_heads": str(args.n_heads),
        "model.n_kv_heads": str(args.n_heads),
        "model.ffn_dim": str(args.ffn_dim),
        "model.max_seq_len": str(args.seq_len),
    }


def train_overrides(args: argparse.Namespace, steps: int, lr: float, out: Path) -> dict[str, str]:
    return {
        "data.seq_len": str(args.seq_len),
        "data.batch_size": str(args.batch_size),
        "data.seed": str(args.seed),
        "train.seed": str(args.seed),
        "train.steps": str(steps),
        "train.device": "cpu",
        "train.dtype": "float32",
        "train.log_every": str(max(1, min(10, steps // 10))),
        "train.eval_every": str(steps),
        "train.checkpoint_every": str(steps),
        "train.keep_checkpoints": "1",
        "optim.lr": str(lr),
        "optim.warmup_steps": str(max(1, steps // 20)),
        "train.out": str(out),
    }


def finished(run_dir: Path, steps: int) -> Path | None:
    final = run_dir / "checkpoints" / f"step-{steps:08d}"
    return final if final in list_checkpoints(run_dir / "checkpoints") else None


def random_start(args: argparse.Namespace, tok_dir: Path, out: Path) -> Path:
    """The randomly initialised model as a checkpoint folder with the tokenizer (SFT needs it)."""
    folder = out / "random_init"
    if not (folder / "config.json").exists():
        tok = load_tokenizer(tok_dir)
        run = load_run_config(None, model_overrides(args))
        config = run.model_config(vocab_size=tok.vocab_size)
        model = build_model(config, seed=args.seed)
        save_herd_folder(config, model.state_dict(), folder, tokenizer=tok.files(), overwrite=True)
    return folder


def pretrain(args: argparse.Namespace, tok_dir: Path, corpus: Path, out: Path) -> tuple[Path, dict]:
    """The same initialisation trained on the prose: `herd data prepare` + `herd train`."""
    data = prepare([str(corpus)], tok_dir, out / "pretrain_data", val_fraction=0.0,
                   show_progress=False)  # fmt: skip
    run_dir = out / "pretrained"
    done = finished(run_dir, args.pretrain_steps)
    if done is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        run = load_run_config(
            None,
            {
                **model_overrides(args),
                "data.path": str(data.parent),
                **train_overrides(args, args.pretrain_steps, args.pretrain_lr, run_dir),
            },
        )
        print(f"pretraining for {args.pretrain_steps} steps in {run_dir}")
        start = time.perf_counter()
        last = Trainer(run, run_dir).fit(show_progress=not args.quiet)
        record = {"loss": last.get("loss"), "seconds": time.perf_counter() - start}
        (run_dir / "summary.json").write_text(json.dumps(record) + "\n")
        done = finished(run_dir, args.pretrain_steps)
    else:
        print(f"reusing the finished pretraining run in {run_dir}")
    return done, json.loads((run_dir / "summary.json").read_text())


def _fine_tune(args, out, run_dir: Path, steps: int, overrides: dict, defaults: dict, data, label):
    """One run of `herd sft`/`herd dpo`'s code (a config with the stage's defaults under the
    overrides, its data, the trainer), or the finished one reused; its checkpoint and record."""
    done = finished(run_dir, steps)
    if done is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        run = load_stage_config(None, overrides, defaults)
        print(f"{label}: {steps} steps in {run_dir}")
        start_time = time.perf_counter()
        last = Trainer(run, run_dir, data=data(run)).fit(show_progress=not args.quiet)
        record = {"loss": last.get("loss"), "seconds": time.perf_counter() - start_time}
        (run_dir / "summary.json").write_text(json.dumps(record) + "\n")
        done = finished(run_dir, steps)
    else:
        print(f"{label}: reusing the finished run in {run_dir}")
    return done, json.loads((run_dir / "summary.json").read_text())


def sft(args: argparse.Namespace, out: Path, start_name: str, start: Path) -> tuple[Path, dict]:
    """`herd sft --model.checkpoint START --data.path OUT/sft.jsonl ...`, through its code."""
    overrides = {
        "model.checkpoint": str(start),
        "data.path": str(out / "sft.jsonl"),
        **train_overrides(args, args.sft_steps, args.sft_lr, out / f"{start_name}+sft"),
    }
    return _fine_tune(args, out, out / f"{start_name}+sft", args.sft_steps, overrides,
                      SFT_DEFAULTS, sft_data, f"{start_name} -> sft")  # fmt: skip


def lora_sft(args: argparse.Namespace, out: Path, start_name: str, start: Path):
    """The same SFT run with LoRA adapters (`--lora.r R --lora.target_modules all-linear`) on the
    frozen start, at --lora-lr: same conversations, steps and batch as full SFT."""
    run_dir = out / f"{start_name}+lora_sft"
    overrides = {
        "model.checkpoint": str(start),
        "data.path": str(out / "sft.jsonl"),
        **train_overrides(args, args.sft_steps, args.lora_lr, run_dir),
        "lora.r": str(args.lora_r),
        "lora.alpha": str(args.lora_alpha),
        "lora.target_modules": "all-linear",
    }
    return _fine_tune(args, out, run_dir, args.sft_steps, overrides, SFT_DEFAULTS, sft_data,
                      f"{start_name} -> lora_sft (r {args.lora_r})")  # fmt: skip


def dpo(alpha: float):
    """The DPO stage with NLL weight `alpha`: `herd dpo --model.checkpoint START --data.path
    OUT/dpo.jsonl --dpo.alpha ALPHA ...` through its code, with its held-out pairs' metrics."""

    def stage(args: argparse.Namespace, out: Path, start_name: str, start: Path):
        run_dir = out / f"{start_name}+dpo_a{alpha:g}"
        pairs, counts = preference_file(args, out, start_name, start)
        overrides = {
            "model.checkpoint": str(start),
            "data.path": str(pairs),
            **train_overrides(args, args.dpo_steps, args.dpo_lr, run_dir),
            "train.eval_every": str(max(1, args.dpo_steps // 4)),
            "data.val_fraction": str(args.dpo_val_fraction),
            "dpo.beta": str(args.dpo_beta),
            "dpo.alpha": str(alpha),
        }
        checkpoint, record = _fine_tune(args, out, run_dir, args.dpo_steps, overrides,
                                        DPO_DEFAULTS, lambda run: dpo_data(run, run_dir),
                                        f"{start_name} -> dpo (alpha {alpha:g})")  # fmt: skip
        return checkpoint, {**record, **dpo_metrics(run_dir), "pairs": counts}

    return stage


def preference_file(args: argparse.Namespace, out: Path, start_name: str, start: Path):
    """OUT/START-pairs.jsonl: the pairs sampled from the DPO start (`sampled_preference_rows`),
    made once and shared by the DPO runs from that start; its path and counts."""
    path, counts_path = out / f"{start_name}-pairs.jsonl", out / f"{start_name}-pairs.json"
    if not counts_path.is_file():
        print(
            f"sampling {args.dpo_samples} replies to {args.dpo_prompts} prompts from {start_name}"
        )
        rows, counts = sampled_preference_rows(args, split_items(args), start)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
        counts_path.write_text(json.dumps(counts) + "\n")
    counts = json.loads(counts_path.read_text())
    print(
        f"{start_name}: greedy replies {counts['greedy_accuracy']:.1%} correct, "
        f"{counts['sample_accuracy']:.1%} of {counts['samples']} sampled ones; {counts['pairs']} "
        "pairs (the likeliest mistake against the answer)"
    )
    return path, counts


def dpo_metrics(run_dir: Path) -> dict:
    """From the run's files: the training `logps/chosen` and `logps/rejected` of the first and
    last log lines, the held-out pairs' `val_rewards/*` at each evaluation, and the share of
    held-out pairs the start (the reference) already preferred the right way."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "logps/chosen" in r]
    val = [r for r in lines if "val_rewards/accuracies" in r]
    first, last = train[0], train[-1]
    record = {
        "logps_chosen_first": first["logps/chosen"],
        "logps_chosen_last": last["logps/chosen"],
        "logps_rejected_first": first["logps/rejected"],
        "logps_rejected_last": last["logps/rejected"],
        "log_steps": [first["step"], last["step"]],
        "val": [
            {
                "step": r["step"],
                "accuracies": r["val_rewards/accuracies"],
                "margins": r["val_rewards/margins"],
                "loss": r["val_loss"],
            }
            for r in val
        ],
    }
    tables = reference_files(run_dir)
    if "val" in tables:
        ref = load_reference_logps(tables["val"])
        record["val_pairs"] = int(ref.shape[0])
        record["start_prefers_chosen"] = float((ref[:, 0] > ref[:, 1]).float().mean())
    return record


STAGE_FUNCTIONS = {"sft": sft, "dpo_a0": dpo(0.0), "dpo_a0.2": dpo(0.2), "lora_sft": lora_sft}


# --- 5. evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def replies(
    model,
    tok,
    prompts: list[str],
    max_new_tokens: int,
    samples: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[tuple[str, bool]]]:
    """For each prompt (one user turn, Llama 3 chat format), `samples` replies: (the text decoded
    without special tokens and stripped, whether it ended with <|eot_id|>). Greedy at temperature
    0. Prompts of one token length go through `generate` together (it takes no padding)."""
    encoded = [tok.encode_dialog([{"role": "user", "content": p}]).ids for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    eot = tok.token_id("<|eot_id|>")
    out: list[list[tuple[str, bool]]] = [[] for _ in prompts]
    for length, members in sorted(by_length.items()):
        for start in range(0, len(members), max(1, 256 // samples)):
            chunk = members[start : start + max(1, 256 // samples)]
            rows = torch.tensor([encoded[i] for i in chunk for _ in range(samples)])
            new = generate(model, rows, max_new_tokens, temperature=temperature,
                           seed=seed + length * 1000 + start, stop_ids=tok.stop_ids)  # fmt: skip
            for r, ids in enumerate(new.tolist()):
                ended = next((k for k, t in enumerate(ids) if t in tok.stop_ids), None)
                content = ids if ended is None else ids[:ended]
                text = tok.decode(content, skip_special=True).strip()
                out[chunk[r // samples]].append((text, ended is not None and ids[ended] == eot))
    return out


def evaluate(
    checkpoint: Path, prompts: dict[str, dict[str, list]], max_new_tokens: int, samples: int
) -> dict:
    """Per split and task (and overall): exact match of the greedy reply, the share of replies
    ending with <|eot_id|>, and the share of `samples` replies sampled at temperature 1 that are
    exactly right (how often a user who samples gets a right answer); a few greedy replies."""
    model = load(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    scores: dict = {}
    for split, tasks in prompts.items():
        scores[split] = {}
        total = {"n": 0, "exact": 0, "eot": 0, "sampled": 0.0}
        for task, pairs in tasks.items():
            asked = [prompt for prompt, _ in pairs]
            got = replies(model, tok, asked, max_new_tokens)
            drawn = replies(model, tok, asked, max_new_tokens, samples, temperature=1.0, seed=7)
            n = len(pairs)
            exact = sum(r[0][0] == answer for r, (_, answer) in zip(got, pairs, strict=True))
            eot = sum(r[0][1] for r in got)
            sampled = sum(
                sum(text == answer for text, _ in r) / samples
                for r, (_, answer) in zip(drawn, pairs, strict=True)
            )
            examples = [
                {"prompt": prompt, "answer": answer, "reply": r[0][0]}
                for r, (prompt, answer) in list(zip(got, pairs, strict=True))[:3]
            ]
            scores[split][task] = {
                "n": n,
                "exact_match": exact / n,
                "eot_share": eot / n,
                "sampled_accuracy": sampled / n,
                "examples": examples,
            }
            total = {
                "n": total["n"] + n,
                "exact": total["exact"] + exact,
                "eot": total["eot"] + eot,
                "sampled": total["sampled"] + sampled,
            }
        scores[split]["overall"] = {
            "n": total["n"],
            "exact_match": total["exact"] / total["n"],
            "eot_share": total["eot"] / total["n"],
            "sampled_accuracy": total["sampled"] / total["n"],
        }
    return scores


def table(results: dict) -> str:
    """Markdown: one row per checkpoint; held-out exact match per task, overall, <|eot_id|> share,
    and the training prompts' overall exact match."""
    tasks = list(TASKS)
    head = (
        "| model | "
        + " | ".join(f"held-out EM {t}" for t in tasks)
        + " | held-out EM overall | held-out sampled correct | ends with <\\|eot_id\\|> | "
        "train-prompt EM |"
    )
    lines = [head, "|" + "---|" * (len(tasks) + 5)]
    for name, r in results.items():
        held, seen = r["scores"]["held_out"], r["scores"]["train"]
        cells = [f"{held[t]['exact_match']:.1%}" for t in tasks]
        cells += [
            f"{held['overall']['exact_match']:.1%}",
            f"{held['overall']['sampled_accuracy']:.1%}",
            f"{held['overall']['eot_share']:.1%}",
            f"{seen['overall']['exact_match']:.1%}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dpo_table(results: dict) -> str:
    """Markdown: per DPO run, the held-out pairs' reward accuracy (and the share the start already
    ranked right), the training logps/chosen and logps/rejected at the first and last log line,
    and held-out exact match before (its SFT start) and after."""
    lines = [
        "| model | held-out pairs | start ranks chosen higher | val rewards/accuracies "
        "(by eval step) | val rewards/margins (last) | logps/chosen first -> last | "
        "logps/rejected first -> last | held-out EM: SFT -> DPO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        d = r.get("dpo") or {}
        if "val" not in d and "logps_chosen_first" not in d:
            continue
        start = results[name.rsplit("+", 1)[0]]["scores"]["held_out"]["overall"]["exact_match"]
        after = r["scores"]["held_out"]["overall"]["exact_match"]
        accuracies = ", ".join(f"{v['accuracies']:.0%}" for v in d["val"]) or "-"
        margins = f"{d['val'][-1]['margins']:.2f}" if d["val"] else "-"
        lines.append(
            f"| {name} | {d.get('val_pairs', 0)} | {d.get('start_prefers_chosen', float('nan')):.0%}"
            f" | {accuracies} | {margins} | {d['logps_chosen_first']:.2f} -> "
            f"{d['logps_chosen_last']:.2f} | {d['logps_rejected_first']:.2f} -> "
            f"{d['logps_rejected_last']:.2f} | {start:.1%} -> {after:.1%} |"
        )
    return "\n".join(lines)


def lora_lines(results: dict) -> list[str]:
    """One line per start: LoRA SFT's held-out EM against full SFT's, and the gap."""
    lines = []
    for name, r in results.items():
        if name.endswith("+lora_sft") and name.replace("+lora_sft", "+sft") in results:
            full = results[name.replace("+lora_sft", "+sft")]["scores"]["held_out"]["overall"]
            lora = r["scores"]["held_out"]["overall"]
            gap = full["exact_match"] - lora["exact_match"]
            lines.append(
                f"{name}: held-out EM {lora['exact_match']:.1%} against full SFT's "
                f"{full['exact_match']:.1%} (full minus LoRA: {gap * 100:+.1f} points); "
                f"final loss {r['train_loss']:.3f} against "
                f"{results[name.replace('+lora_sft', '+sft')]['train_loss']:.3f}."
            )
    return lines


# --- the run ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = study_parser(__doc__, "runs/post_training")
    p.add_argument(
        "--starts",
        nargs="+",
        default=["pretrained"],
        choices=["random_init", "pretrained"],
        help="starting points the stages run from",
    )
    data = p.add_argument_group("tasks and data")
    data.add_argument("--words", type=int, default=3000, help="distinct random words (3-5 letters)")
    data.add_argument("--max-operand", type=int, default=19, help="add: operands 0..N")
    data.add_argument(
        "--held-out", type=float, default=0.2, help="share of words and pairs kept out of training"
    )
    data.add_argument("--pretrain-docs", type=int, default=400, help="pretraining documents")
    data.add_argument("--sentences-per-doc", type=int, default=20, help="sentences per document")
    data.add_argument("--sft-examples", type=int, default=3000, help="SFT conversations")
    data.add_argument(
        "--sft-noise", type=float, default=0.3, help="share of SFT answers that are the task's slip"
    )
    data.add_argument("--vocab-size", type=int, default=320, help="BPE vocabulary size")
    data.add_argument(
        "--eval-prompts", type=int, default=80, help="prompts per task and split evaluated"
    )
    data.add_argument("--max-new-tokens", type=int, default=16, help="reply length limit")
    data.add_argument(
        "--eval-samples", type=int, default=4, help="replies sampled per prompt (temperature 1)"
    )
    model = p.add_argument_group("model (smaller than the demo preset: more steps per parameter)")
    model.add_argument("--dim", type=int, default=128, help="residual width")
    model.add_argument("--n-layers", type=int, default=4, help="Transformer blocks")
    model.add_argument("--n-heads", type=int, default=4, help="attention heads (no GQA)")
    model.add_argument("--ffn-dim", type=int, default=384, help="SwiGLU hidden width")
    train = p.add_argument_group("training")
    train.add_argument("--pretrain-steps", type=int, default=1000, help="pretraining steps")
    train.add_argument("--pretrain-lr", type=float, default=2e-3, help="pretraining peak lr")
    train.add_argument("--sft-steps", type=int, default=300, help="SFT steps")
    train.add_argument("--sft-lr", type=float, default=1e-3, help="SFT peak lr")
    train.add_argument("--lora-r", type=int, default=16, help="LoRA rank (all-linear)")
    train.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha")
    train.add_argument("--lora-lr", type=float, default=3e-3, help="LoRA SFT peak lr")
    train.add_argument(
        "--dpo-prompts", type=int, default=2000, help="training prompts DPO samples replies to"
    )
    train.add_argument(
        "--dpo-samples", type=int, default=4, help="replies sampled per DPO prompt (temperature 1)"
    )
    train.add_argument("--dpo-steps", type=int, default=200, help="DPO steps (each alpha)")
    train.add_argument("--dpo-lr", type=float, default=3e-5, help="DPO peak lr")
    train.add_argument("--dpo-beta", type=float, default=0.1, help="DPO beta")
    train.add_argument(
        "--dpo-val-fraction", type=float, default=0.1, help="share of pairs held out"
    )
    train.add_argument("--batch-size", type=int, default=8, help="rows per step")
    train.add_argument("--seq-len", type=int, default=256, help="positions per row")
    train.add_argument("--seed", type=int, default=0, help="seed of items, data order, init")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parse_study(p, argv, QUICK)
    return args


def write_inputs(args: argparse.Namespace, out: Path) -> tuple[dict, Path, Path]:
    """The items, the pretraining prose, OUT/sft.jsonl and the BPE (trained once): what every
    stage reads (experiments/best_of_k.py starts from them too)."""
    items = split_items(args)
    corpus = pretraining_corpus(args, items, out / "pretrain_corpus")
    return items, corpus, write_sft_and_bpe(args, out, chat_rows(args, items), corpus)


def write_sft_and_bpe(args: argparse.Namespace, out: Path, rows: list[dict], corpus: Path) -> Path:
    """OUT/sft.jsonl of `rows`, and the BPE trained on `corpus` (once): its folder."""
    (out / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        print(f"training a {args.vocab_size}-token BPE on the pretraining prose")
        train_bpe([corpus], args.vocab_size, tok_dir, overwrite=True, show_progress=False)
    return tok_dir


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    items, corpus, tok_dir = write_inputs(args, out)
    prompts = {"held_out": eval_prompts(args, items, "held_out"),
               "train": eval_prompts(args, items, "train")}  # fmt: skip

    starts, runs = {}, {}
    if "random_init" in args.starts:
        starts["random_init"] = random_start(args, tok_dir, out)
    if "pretrained" in args.starts:
        starts["pretrained"], runs["pretrained"] = pretrain(args, tok_dir, corpus, out)
    checkpoints = {}
    for start_name, checkpoint in starts.items():
        checkpoints[start_name] = checkpoint
        made = {None: start_name}  # stage -> the model it made
        for stage, parent in STAGES:
            name = f"{made[parent]}+{stage}"
            checkpoints[name], runs[name] = STAGE_FUNCTIONS[stage](
                args, out, made[parent], checkpoints[made[parent]]
            )
            made[stage] = name
    results = {}
    for name, checkpoint in checkpoints.items():
        start = time.perf_counter()
        scores = evaluate(checkpoint, prompts, args.max_new_tokens, args.eval_samples)
        results[name] = {
            "checkpoint": str(checkpoint),
            "train_loss": runs.get(name, {}).get("loss"),
            "train_seconds": runs.get(name, {}).get("seconds"),
            "dpo": {k: v for k, v in runs.get(name, {}).items() if k not in ("loss", "seconds")},
            "scores": scores,
        }
        held = scores["held_out"]["overall"]
        print(
            f"{name}: held-out exact match {held['exact_match']:.1%}, ends with <|eot_id|> "
            f"{held['eot_share']:.1%} ({time.perf_counter() - start:.0f} s to evaluate)"
        )
    seconds = time.perf_counter() - began
    report = [
        table(results),
        "",
        dpo_table(results),
        "",
        *lora_lines(results),
        "",
        f"Held-out: {len(prompts['held_out']['add'])} prompts per task whose words or number "
        f"pairs appear in no training text; train-prompt EM: as many prompts from the SFT "
        f"items. Greedy decoding, at most {args.max_new_tokens} new tokens. Model: dim "
        f"{args.dim}, {args.n_layers} layers, vocabulary {args.vocab_size}; pretraining "
        f"{args.pretrain_steps} steps, SFT {args.sft_steps} steps of {args.batch_size} x "
        f"{args.seq_len} positions; LoRA SFT r {args.lora_r} all-linear, lr {args.lora_lr:g} "
        f"(full {args.sft_lr:g}); DPO {args.dpo_steps} steps, beta {args.dpo_beta:g}, lr "
        f"{args.dpo_lr:g}, pairs sampled on {args.dpo_prompts} training prompts "
        f"({args.dpo_samples} replies each). {seconds / 60:.1f} minutes in all.",
    ]
    print("\n" + "\n".join(report))
    summary = {
        "question": "does herd sft teach a small model to answer in the chat format, correctly "
        "and ending its turn, on held-out prompts?",
        "settings": {k: v for k, v in vars(args).items() if k not in ("quiet", "threads")},
        "stages": [stage for stage, _ in STAGES],
        "results": results,
        "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(report) + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'summary.md'}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except HerdError as e:
        sys.exit(f"error: {e}")
