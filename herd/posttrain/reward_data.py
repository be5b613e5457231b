"""Preference pairs for reward models: DPO's rows plus an optional `rating` or `margin` each.

A row is a DPO row (herd/data/chat_data.py: `prompt`, `chosen`, `rejected` in TRL's
conversational or plain-string forms) with, optionally,
    "rating": "significantly better" | "better" | "slightly better" |
              "negligibly better / unsure" (or "unsure") | 3 | 2 | 1 | 0
    "margin": a finite number, used as the pair's margin whatever the table
(herd/posttrain/reward.py). The rating also names the level the held-out accuracy is reported
at. A bad rating or margin makes the row malformed: skipped and reported, or fatal with
`data.strict`, like any other problem of the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from herd.data.chat_data import ChatData, load_dpo
from herd.posttrain.reward import pair_margin, parse_rating


@dataclass
class RewardExample:
    """A DPO example (the preference batches' fields) with its rating level and margin."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    chosen_mask: list[int]
    rejected_ids: list[int]
    rejected_mask: list[int]
    source: str  # FILE:LINE
    level: int | None  # 0-3 (3: significantly better); None: the row has no rating
    margin: float

    def lengths(self) -> tuple[int, int]:
        """Tokens of prompt + chosen and prompt + rejected (the scored positions are the last)."""
        n = len(self.prompt_ids)
        return n + len(self.chosen_ids), n + len(self.rejected_ids)


def _rating_and_margin(row: dict) -> tuple[int | None, float | None]:
    level = None if row.get("rating") is None else parse_rating(row["rating"])
    margin = row.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, int | float):
            raise ValueError(f"margin {margin!r}: expected a number")
        if not math.isfinite(margin):
            raise ValueError(f"margin {margin!r}: expected a finite number")
    return level, margin


def load_reward_pairs(
    tok,
    sources: str | Path | list,
    max_len: int,
    margin: str = "none",
    strict: bool = False,
    split: str = "train",
) -> ChatData:
    """Reward examples of `sources` whose prompt plus longer response fits `max_len` tokens,
    margins from the `margin` table (none, small, large) unless a row gives its own."""

    def rated(row: dict, e) -> RewardExample:
        level, explicit = _rating_and_margin(row)
        return RewardExample(
            e.prompt_ids,
            e.chosen_ids,
            e.chosen_mask,
            e.rejected_ids,
            e.rejected_mask,
            e.source,
            level,
            pair_margin(level, explicit, margin),
        )

    return load_dpo(tok, sources, max_len, strict, split, extend=rated)
