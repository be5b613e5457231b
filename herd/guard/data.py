"""Labelled conversations for guards, and the SFT conversations a guard is trained on.

A labelled row is {"messages": [...], "label": "safe"|"unsafe", "categories": ["S1", ...]}
(JSONL, Parquet, a folder of them or a Hugging Face dataset): the conversation alternates
user/assistant from the user, its last message is the one assessed, and an unsafe row names the
categories it violates (a safe row names none). `herd guard eval` reads these rows; `herd guard
CKPT --data` reads the same rows with the label optional.

Training (`herd guard train`) turns each row into a two-message SFT conversation: the guard's
prompt as the user turn (herd/guard/prompt.py) and the answer in the released format as the
assistant turn ("safe", or "unsafe\\nS1,S10"), so SFT's loss falls on the answer only. Category
dropping, Llama Guard's augmentation (Inan et al. 2023, section 3.2), teaches a guard to follow
the policy in its prompt rather than a fixed list: with probability `drop_other` a random number
of the categories the row does not violate are left out of its prompt, and with probability
`drop_violated` an unsafe row's violated categories are all left out and its label becomes safe.
"""

from __future__ import annotations

import random

from herd.errors import HerdError
from herd.guard.policy import CODE_PATTERN, Policy
from herd.guard.prompt import check_conversation, guard_task, target_text


def check_labelled_row(row: object, where: str, require_label: bool = True) -> dict:
    """A clean copy of a labelled row: {"messages", "label" (or None), "categories"}."""
    if isinstance(row, Exception):
        raise HerdError(f"{where}: {row}")
    if not isinstance(row, dict) or "messages" not in row:
        raise HerdError(f"{where}: expected an object with 'messages'")
    messages = [
        {"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
        for m in (row["messages"] if isinstance(row["messages"], list) else [None])
    ]
    check_conversation(messages, where)
    label = row.get("label")
    if label is None and not require_label:
        return {"messages": messages, "label": None, "categories": []}
    if label not in ("safe", "unsafe"):
        raise HerdError(f"{where}: label {label!r}, expected 'safe' or 'unsafe'")
    categories = row.get("categories") or []
    if not isinstance(categories, list) or not all(
        isinstance(c, str) and CODE_PATTERN.fullmatch(c) for c in categories
    ):
        raise HerdError(f"{where}: categories must be a list of codes such as ['S1', 'S10']")
    if label == "safe" and categories:
        raise HerdError(f"{where}: a safe row names categories {categories}")
    return {"messages": messages, "label": label, "categories": list(dict.fromkeys(categories))}


def read_labelled(source: str, split: str = "train", require_label: bool = True) -> list:
    """[(FILE:LINE, row)] of every row, checked; the first bad row is a one-line error."""
    from herd.data.chat_data import read_rows

    rows = [
        (where, check_labelled_row(row, where, require_label))
        for where, row in read_rows(source, split)
    ]
    if not rows:
        raise HerdError(f"{source}: no rows")
    return rows


def augment(
    row: dict, policy: Policy, rng: random.Random, drop_other: float, drop_violated: float
) -> tuple[Policy, str, list[str]]:
    """(the policy of this row's prompt, its label, its categories) after category dropping."""
    label, violated = row["label"], [c for c in row["categories"] if c in policy.codes]
    if label == "unsafe" and not violated:
        return policy, label, row["categories"]  # violates only categories outside the policy
    kept = policy
    others = [c for c in policy.codes if c not in violated]
    if others and rng.random() < drop_other:
        kept = kept.without(rng.sample(others, rng.randint(1, len(others))))
    if label == "unsafe" and rng.random() < drop_violated and len(kept.codes) > len(violated):
        return kept.without(violated), "safe", []
    return kept, label, violated


def training_conversations(
    rows: list, policy: Policy, drop_other: float, drop_violated: float, copies: int, seed: int
) -> list[dict]:
    """SFT rows {"messages": [guard prompt, answer]}: `copies` per labelled row, each with its
    own draw of category dropping (deterministic in `seed`)."""
    for name, p in (("guard.drop_other", drop_other), ("guard.drop_violated", drop_violated)):
        if not 0.0 <= p <= 1.0:
            raise HerdError(f"{name} {p}: expected a probability in [0, 1]")
    if copies < 1:
        raise HerdError(f"guard.copies {copies}: expected 1 or more")
    rng = random.Random(seed)
    out = []
    for where, row in rows:
        if row["label"] is None:
            raise HerdError(f"{where}: has no label to train on")
        unknown = [c for c in row["categories"] if c not in policy.codes]
        if unknown and len(unknown) == len(row["categories"]):
            raise HerdError(
                f"{where}: category {unknown[0]} is not in the policy ({', '.join(policy.codes)})"
            )
        for _ in range(copies):
            shown, label, codes = augment(row, policy, rng, drop_other, drop_violated)
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": guard_task(row["messages"], shown)},
                        {"role": "assistant", "content": target_text(label, codes)},
                    ]
                }
            )
    return out
