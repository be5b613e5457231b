"""Belebele scoring speed: herd's `evaluate_items` against lm-evaluation-harness (its Hugging Face
backend running lm-eval's own `belebele` task), same weights, same items, one process.

The model is Llama-2-shaped and random (default 8 layers, dim 512, vocabulary 32,000); the items
are generated Belebele-format questions over ~120-word passages in four "languages" (written into
a temporary JSONL, one row per question), and a byte-level BPE trained on them is the tokenizer of
both engines (lm-eval gets it as a transformers fast tokenizer that adds BOS, as Llama's do).
Both engines score the four letters " A".." D" after lm-eval's prompt, so they compute the same
log-likelihoods; the script checks that every item gets the same choice (equal accuracy) and
reports the largest log-likelihood difference.

    .venv/bin/python bench/eval.py                 # 96 items, batch 8
    .venv/bin/python bench/eval.py --items 200 --out /tmp/eval.json

items/s = items / wall seconds of the scoring call (tokenisation included for both; model
loading excluded for both). The target is herd >= 2x lm-eval.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

WORDS = [
    "river",
    "village",
    "boat",
    "hill",
    "spring",
    "winter",
    "market",
    "morning",
    "evening",
    "teacher",
    "student",
    "library",
    "book",
    "garden",
    "tomato",
    "bread",
    "water",
    "mountain",
    "snow",
    "city",
    "train",
    "station",
    "friend",
    "family",
    "doctor",
    "school",
    "road",
    "bridge",
    "forest",
    "lake",
    "field",
    "farmer",
    "harvest",
    "rain",
    "wind",
    "summer",
    "autumn",
    "window",
    "door",
    "kitchen",
    "table",
    "letter",
    "music",
    "song",
    "dance",
    "paint",
    "story",
    "history",
    "science",
    "number",
    "money",
    "price",
    "shop",
    "street",
    "car",
    "bus",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Belebele letter-scoring items/s: herd vs lm-eval's HF backend, same weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--items", type=int, default=96, help="questions (4 choices each)")
    p.add_argument("--batch", type=int, default=8, help="batch size of both engines")
    p.add_argument("--layers", type=int, default=8, help="Transformer blocks")
    p.add_argument("--dim", type=int, default=512, help="model width")
    p.add_argument("--vocab", type=int, default=32000, help="model vocabulary (Llama 2 size)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the items")
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    return p.parse_args(argv)


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sentences = [" ".join(rng.choices(WORDS, k=12)).capitalize() + "." for _ in range(10)]
        answers = [" ".join(rng.choices(WORDS, k=3)) for _ in range(4)]
        lang = ("eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn")[i % 4]
        rows.append(
            {
                "link": f"https://example.org/{i // 2}",
                "question_number": i % 2 + 1,
                "flores_passage": " ".join(sentences),
                "question": f"What is said about the {WORDS[i % len(WORDS)]}?",
                **{f"mc_answer{k + 1}": a for k, a in enumerate(answers)},
                "correct_answer_num": str(rng.randint(1, 4)),
                "dialect": lang,
            }
        )
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks._yaml_loader import load_yaml
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    import herd
    from herd.checkpoint.hf import write_hf_folder
    from herd.eval.mc_data import load_items
    from herd.eval.multiple_choice import evaluate_items
    from herd.model.config import ModelConfig
    from herd.vocab.bpe import train_bpe

    hf_logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="herd-eval-bench-"))
    rows = make_rows(args.items, args.seed)
    data = tmp / "belebele.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "text.txt").write_text("\n".join(r["flores_passage"] for r in rows))
    tok_dir = train_bpe([tmp / "corpus"], 2000, tmp / "tok", show_progress=False)
    tokenizer = herd.load_tokenizer(tok_dir)
    heads = args.dim // 64
    config = ModelConfig(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=heads,
        n_kv_heads=heads,
        vocab_size=args.vocab,
        ffn_dim=int(8 * args.dim / 3 + 63) // 64 * 64,
        max_seq_len=1024,
    )
    model = herd.build_model(config, seed=args.seed).eval()
    write_hf_folder(config, model.state_dict(), tmp / "hf", tokenizer.files(), overwrite=True)
    hf_model = LlamaForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32).eval()
    names = {i: t for t, i in tokenizer.special_tokens.items()}
    bos = names[tokenizer.bos_id]
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    raw.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_id)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=bos, eos_token=names[tokenizer.eos_id]
    )

    items = load_items(data)
    start = time.perf_counter()
    herd_results = evaluate_items(
        model, tokenizer, items, batch_size=args.batch, show_progress=False
    )
    herd_s = time.perf_counter() - start

    template = os.path.join(
        os.path.dirname(lm_eval.__file__), "tasks/belebele/_default_template_yaml"
    )
    task = {
        **load_yaml(template, resolve_func=True),
        "task": "belebele_bench",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "fewshot_split": "test",
    }
    lm = HFLM(pretrained=hf_model, tokenizer=hf_tok, batch_size=args.batch, add_bos_token=True)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=0,
        log_samples=True,
        bootstrap_iters=0,
        verbosity="ERROR",
    )
    lm_s = time.perf_counter() - start

    reference = {}
    for sample in out["samples"]["belebele_bench"]:
        doc = sample["doc"]
        reference[f"{doc['dialect']}/{doc['link']}#{doc['question_number']}"] = [
            float(r[0]) for r in sample["filtered_resps"]
        ]
    same = sum(
        r.choice == max(range(4), key=reference[r.item.uid].__getitem__) for r in herd_results
    )
    diff = max(
        abs(a - b)
        for r in herd_results
        for a, b in zip(r.logprobs, reference[r.item.uid], strict=True)
    )
    herd_acc = sum(r.correct for r in herd_results) / len(herd_results)
    lm_acc = out["results"]["belebele_bench"]["acc,none"]
    result = {
        "items": len(herd_results),
        "batch": args.batch,
        "threads": args.threads,
        "model": {
            "layers": args.layers,
            "dim": args.dim,
            "vocab": args.vocab,
            "params": config.num_params(),
        },
        "herd_items_per_s": len(herd_results) / herd_s,
        "lm_eval_items_per_s": len(herd_results) / lm_s,
        "ratio": lm_s / herd_s,
        "herd_accuracy": herd_acc,
        "lm_eval_accuracy": lm_acc,
        "same_choice": same,
        "max_logprob_diff": diff,
        "torch": torch.__version__,
        "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4.x",
    }
    print(
        f"Belebele letter scoring, {result['items']} items, batch {args.batch}, "
        f"{config.num_params() / 1e6:.1f}M-parameter model, {args.threads} threads"
    )
    print(f"herd     {result['herd_items_per_s']:8.2f} items/s   accuracy {herd_acc:.3f}")
    print(
        f"lm-eval  {result['lm_eval_items_per_s']:8.2f} items/s   accuracy {lm_acc:.3f} (HF backend)"
    )
    print(
        f"ratio herd/lm-eval {result['ratio']:.2f}x (target >= 2x); same choice on {same}/"
        f"{result['items']} items; max |logprob diff| {diff:.2e}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = same == result["items"]
    if not ok:
        print("error: the engines disagree on some choices")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
