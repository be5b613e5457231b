"""KV-cache slots and the prefix cache: which row of the cache each request uses, and how much of
its prompt is already there.

A slot remembers the tokens whose keys and values it holds, also after its request has finished:
a finished request's KV stays in place until the slot is given to another request. A new request
takes the free slot whose remembered tokens share the longest prefix with its prompt (a shared
system prompt, an earlier turn of the same conversation), and only the rest of the prompt is
prefilled. When a running request's slot shares a longer prefix, those positions are copied
across instead. KV at position p depends only on tokens 0..p, so a shared prefix's KV is exact.
Slots not matched are handed out least recently used first, so popular prefixes stay longest.
With `prefix_cache=False` nothing is reused: every prompt is prefilled whole (what the prefix
cache saves is measured against that, bench/serve.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # tokens whose KV this row holds, in order
    busy: bool = False
    last_used: int = 0


@dataclass
class Placement:
    """Where a new request goes: its slot, how many prompt tokens are already there (`reused`),
    and the slot to copy them from first (None: they are in the request's own slot)."""

    slot: int
    reused: int
    copy_from: int | None


class SlotTable:
    def __init__(self, n: int, prefix_cache: bool = True) -> None:
        self.slots = [Slot(i) for i in range(n)]
        self.prefix_cache = prefix_cache
        self._clock = 0

    def free_count(self) -> int:
        return sum(not s.busy for s in self.slots)

    def acquire(self, prompt: list[int]) -> Placement | None:
        """A slot for `prompt`, or None when every slot is busy. At least the prompt's last token
        is left to prefill, since its logits give the first generated token."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        limit = len(prompt) - 1 if self.prefix_cache else 0

        def match(s: Slot) -> int:
            return min(common_prefix(s.tokens, prompt), limit)

        # the longest match among free slots; among equals the least recently used
        slot = max(free, key=lambda s: (match(s), -s.last_used))
        reused, copy_from = match(slot), None
        busy = [s for s in self.slots if s.busy]
        donor = max(busy, key=match, default=None)
        if donor is not None and match(donor) > reused:
            reused, copy_from = match(donor), donor.index
        self._clock += 1
        slot.busy, slot.last_used = True, self._clock
        slot.tokens = prompt[:reused]
        return Placement(slot.index, reused, copy_from)

    def release(self, index: int) -> None:
        """The slot is free; its KV (and `tokens`) stay until it is reused."""
        self.slots[index].busy = False

    def wrote(self, index: int, tokens: list[int]) -> None:
        """The KV of `tokens` was written at the next positions of slot `index`."""
        self.slots[index].tokens.extend(tokens)

    def swap(self, a: int, b: int) -> None:
        """Exchange what rows a and b hold (the engine moves the KV alongside)."""
        sa, sb = self.slots[a], self.slots[b]
        sa.tokens, sb.tokens = sb.tokens, sa.tokens
        sa.busy, sb.busy = sb.busy, sa.busy
        sa.last_used, sb.last_used = sb.last_used, sa.last_used

    def used_positions(self) -> int:
        return sum(len(s.tokens) for s in self.slots if s.busy)
