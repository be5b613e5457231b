"""Multiple-choice evaluation: Belebele reading comprehension and any set in the generic schema.

Belebele prompts are lm-evaluation-harness's `belebele` task, so scores compare with published
lm-eval numbers:

    P: {flores_passage}
    Q: {question}
    A: {mc_answer1}
    B: {mc_answer2}
    C: {mc_answer3}
    D: {mc_answer4}
    Answer:

`letter` scoring picks the highest log-likelihood among the continuations " A" .. " D" (lm-eval's
`acc`). `answer` scoring drops the lettered options and compares each answer text as the
continuation of "P: ...\\nQ: ...\\nAnswer:", normalised by its length in UTF-8 bytes (lm-eval's
`acc_norm` normalisation), so a model is not rewarded for short answers.

Few-shot examples (`shots`) come before the prompt, each followed by its correct choice and a blank
line (lm-eval's layout). They are drawn from the same language, deterministically from the item's
id, and never include the item under test or any question about its passage.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

from tqdm import tqdm

from herd.eval.mc_data import Dataset, Item
from herd.eval.scoring import Request, encode_pair, score_requests, truncate_left

LETTERS = ("A", "B", "C", "D")
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def _answers(item: Item) -> list[str]:
    return [str(item.fields[f"mc_answer{k}"]) for k in range(1, 5)]


def belebele_prompt(item: Item, scoring: str) -> str:
    f = item.fields
    head = f"P: {f['flores_passage']}\nQ: {str(f['question']).strip()}\n"
    if scoring == "answer":
        return head + "Answer:"
    options = "".join(f"{letter}: {a}\n" for letter, a in zip(LETTERS, _answers(item), strict=True))
    return head + options + "Answer:"


def choices_of(item: Item, task: str, scoring: str) -> list[str]:
    """Continuation texts, without the delimiter."""
    if task == "mc":
        return list(item.fields["choices"])
    return list(LETTERS) if scoring == "letter" else _answers(item)


def prompt_of(item: Item, task: str, scoring: str) -> str:
    return item.fields["context"] if task == "mc" else belebele_prompt(item, scoring)


def _passage(item: Item) -> str:
    return str(item.fields.get("link") or item.fields.get("flores_passage") or item.uid)


def fewshot_examples(item: Item, pool: list[Item], shots: int) -> list[Item]:
    """`shots` other items of the item's language, never the item itself or its passage; the
    draw depends only on the item's id, so reruns and subsets see the same examples."""
    if shots <= 0:
        return []
    passage = _passage(item)
    eligible = [
        o
        for o in pool
        if o.language == item.language and o.uid != item.uid and _passage(o) != passage
    ]
    rng = random.Random(zlib.crc32(item.uid.encode("utf-8")))
    return rng.sample(eligible, min(shots, len(eligible)))


def full_prompt(item: Item, pool: list[Item], task: str, scoring: str, shots: int) -> str:
    parts = []
    for ex in fewshot_examples(item, pool, shots):
        correct = choices_of(ex, task, scoring)[ex.answer]
        parts.append(prompt_of(ex, task, scoring) + TARGET_DELIMITER + correct + FEWSHOT_DELIMITER)
    return "".join(parts) + prompt_of(item, task, scoring)


@dataclass
class ItemResult:
    item: Item
    logprobs: list[float]  # summed log-likelihood per choice
    scores: list[float]  # what is compared: logprobs, or per-byte logprobs with `answer`
    choice: int

    @property
    def correct(self) -> bool:
        return self.choice == self.item.answer


def evaluate_items(
    model,
    tokenizer,
    data: Dataset,
    task: str = "belebele",
    scoring: str = "letter",
    shots: int = 0,
    batch_size: int = 8,
    bos: bool = True,
    pool: Dataset | None = None,
    show_progress: bool = True,
) -> list[ItemResult]:
    """Score every item's choices and pick the best; `pool` supplies few-shot examples (default:
    the evaluated items themselves)."""
    examples = (pool or data).items
    limit = model.config.max_seq_len
    requests, owners = [], []
    for index, item in enumerate(data.items):
        prompt = full_prompt(item, examples, task, scoring, shots)
        pairs = [
            encode_pair(tokenizer, prompt, TARGET_DELIMITER + c, bos, tokenizer.bos_id)
            for c in choices_of(item, task, scoring)
        ]
        contexts = {tuple(ctx) for ctx, _ in pairs}
        longest = max(len(cont) for _, cont in pairs)
        if len(contexts) == 1:  # the usual case: one shared prefix for every choice
            ctx = truncate_left(pairs[0][0], longest, limit)
            requests.append(Request(ctx, [cont for _, cont in pairs]))
            owners.append((index, None))
        else:  # the tokenizer merged a choice into the context: score each pair on its own
            for k, (ctx, cont) in enumerate(pairs):
                requests.append(Request(truncate_left(ctx, len(cont), limit), [cont]))
                owners.append((index, k))
    bar = tqdm(total=len(requests), desc="scoring", unit="item", disable=not show_progress or None)
    scored = score_requests(model, requests, batch_size, progress=bar)
    bar.close()
    per_item: dict[int, list[float]] = {}
    for (index, k), scores in zip(owners, scored, strict=True):
        values = per_item.setdefault(index, [])
        if k is None:
            values.extend(s.logprob for s in scores)
        else:
            values.append(scores[0].logprob)
    results = []
    for index, item in enumerate(data.items):
        logprobs = per_item[index]
        compared = logprobs
        if scoring == "answer":
            texts = choices_of(item, task, scoring)
            compared = [
                lp / max(1, len((TARGET_DELIMITER + t).encode("utf-8")))
                for lp, t in zip(logprobs, texts, strict=True)
            ]
        choice = max(range(len(compared)), key=lambda k: compared[k])
        results.append(ItemResult(item, logprobs, compared, choice))
    return results


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sensible at 0 and 1, unlike the normal one)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(results: list[ItemResult]) -> dict:
    """Per-language accuracy with its 95% interval, and the macro average over languages."""
    by_lang: dict[str, list[bool]] = {}
    for r in results:
        by_lang.setdefault(r.item.language, []).append(r.correct)
    languages = {}
    for lang, outcomes in sorted(by_lang.items()):
        n, k = len(outcomes), sum(outcomes)
        low, high = wilson_interval(k, n)
        languages[lang] = {"items": n, "correct": k, "accuracy": k / n, "ci95": [low, high]}
    macro = sum(v["accuracy"] for v in languages.values()) / max(1, len(languages))
    return {"languages": languages, "macro_accuracy": macro, "items": len(results)}
