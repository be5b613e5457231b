"""The list task of experiments/best_of_k.py: name N words of a kind, other than the ones listed.

"Name three trees other than oak and pine." -> "elm, ash and beech". Any N distinct words of
the kind that the prompt does not exclude are right, so the policy's samples differ from each
other, and checking a reply is matching words against the prompt and a fixed word list: what a
small reward model can learn (token identity, the kind of each word), unlike the post-training
tasks (a sum, a reversed or capitalised word), where telling the right reply from a near miss
takes doing the task. Training and held-out prompts have different exclusion lists.

Replies are graded by `quality`: the share of distinct allowed words among max(N, words given),
1 exactly when the reply is right. The careless annotator of the SFT demonstrations (`--sft-noise`
of them) makes one mistake of four: an excluded word, a word twice, a word of another kind, one
word too many or too few.
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import post_training as pt  # the sibling script, as a library
from agent_world import ENTITY_VALUES  # common one-word values by kind

# kind of word -> how the prompt names it
KINDS = {
    "crops": "crops",
    "fish": "fish",
    "trees": "trees",
    "metals": "metals",
    "wild": "wild animals",
    "genres": "music genres",
    "devices": "devices",
    "stones": "stones",
}
COUNTS = {2: "two", 3: "three"}
KIND_OF = {w: kind for kind in KINDS for w in ENTITY_VALUES[kind]}


def prompt_of(key: tuple) -> str:
    kind, n, excluded = key
    return f"Name {COUNTS[n]} {KINDS[kind]} other than {join(list(excluded))}."


def join(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def split_reply(text: str) -> list[str]:
    return [w for w in re.split(r", | and ", text.strip().rstrip(".")) if w]


def quality(text: str, key: tuple) -> float:
    """Distinct allowed words (at most N) / max(N, words given): 1 exactly for a right reply."""
    kind, n, excluded = key
    words = split_reply(text)
    allowed = {w for w in words if KIND_OF.get(w) == kind and w not in excluded}
    return min(len(allowed), n) / max(n, len(words))


def right(text: str, key: tuple) -> bool:
    return quality(text, key) == 1.0


def answer(key: tuple, rng: random.Random) -> str:
    kind, n, excluded = key
    return join(rng.sample([w for w in ENTITY_VALUES[kind] if w not in excluded], n))


def split_keys(args: argparse.Namespace) -> dict[str, list[tuple]]:
    """Every (kind, N, excluded words) prompt, with --held-out of the exclusion lists of each kind
    (for both counts) held out of all training text."""
    rng = random.Random(args.seed)
    out: dict[str, list[tuple]] = {"train": [], "held_out": []}
    for kind in KINDS:
        words = ENTITY_VALUES[kind]
        lists = [c for size in (1, 2, 3) for c in itertools.combinations(words, size)]
        rng.shuffle(lists)
        cut = round(len(lists) * args.held_out)
        for split, chosen in (("held_out", lists[:cut]), ("train", lists[cut:])):
            out[split] += [(kind, n, excluded) for excluded in chosen for n in COUNTS]
    return out


def careless(key: tuple, rng: random.Random) -> str:
    """A demonstration with one of the annotator's four mistakes."""
    kind, n, excluded = key
    words = answer(key, rng).replace(" and ", ", ").split(", ")
    mistake = rng.randrange(4)
    if mistake == 0:  # an excluded word in place of one
        words[rng.randrange(n)] = rng.choice(excluded)
    elif mistake == 1:  # a word twice
        words[-1] = words[0]
    elif mistake == 2:  # a word of another kind
        other = rng.choice([k for k in KINDS if k != kind])
        words[rng.randrange(n)] = rng.choice(ENTITY_VALUES[other])
    elif n == 2 or rng.random() < 0.5:  # one too many
        spare = [w for w in ENTITY_VALUES[kind] if w not in excluded and w not in words]
        words.append(rng.choice(spare))
    else:  # one too few
        words.pop()
    return join(words)


def chat_rows(args: argparse.Namespace, keys: dict, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(args.sft_examples):
        key = rng.choice(keys["train"])
        reply = careless(key, rng) if rng.random() < args.sft_noise else answer(key, rng)
        rows.append({"messages": [{"role": "user", "content": prompt_of(key)},
                                  {"role": "assistant", "content": reply}]})  # fmt: skip
    return rows


def prose(key: tuple, rng: random.Random) -> str:
    """A pretraining sentence: a word's kind, or a right reply to a training prompt in prose."""
    kind, n, excluded = key
    if rng.random() < 0.5:
        return f"{rng.choice(ENTITY_VALUES[kind])} is one of the {KINDS[kind]}."
    return f"Besides {join(list(excluded))}, {COUNTS[n]} {KINDS[kind]} are {answer(key, rng)}."


def write_inputs(args: argparse.Namespace, out: Path) -> tuple[dict, Path, Path]:
    """The prompts by split, the pretraining prose, OUT/sft.jsonl and the BPE (trained once)."""
    keys = split_keys(args)
    rng = random.Random(args.seed + 1)
    corpus = out / "pretrain_corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for d in range(args.pretrain_docs):
        text = " ".join(
            prose(rng.choice(keys["train"]), rng) for _ in range(args.sentences_per_doc)
        )
        (corpus / f"doc{d:04d}.txt").write_text(text + "\n", "utf-8")
    rows = chat_rows(args, keys, random.Random(args.seed + 2))
    return keys, corpus, pt.write_sft_and_bpe(args, out, rows, corpus)


def asked_prompts(keys: dict, split: str, n: int, seed: int) -> list[tuple[str, tuple]]:
    """n distinct (prompt, key) of `split`."""
    pool = list(keys[split])
    random.Random(seed).shuffle(pool)
    return [(prompt_of(key), key) for key in pool[:n]]
