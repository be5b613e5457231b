"""A guard in front of a chat model: checks what the user sends and what the model answers
(`herd chat --guard`, `herd serve --guard`), logs and counts each decision.

Input: the guard assesses the chat's last user turn as the guard sees the chat (`guard_view`:
system and tool messages left out); no user turn last means nothing new from the user, and no
check. Output: a reply is assessed as the agent's answer to that chat. What an unsafe verdict
does is the caller's: the chat REPL prints the refusal, the server answers with it and
finish_reason "content_filter" (herd/serve/moderation.py, which also holds streamed replies until
they pass).

Checks run one at a time (the guard model is not shared-batch safe); the async forms run them on
a worker thread so an event loop keeps serving. Each decision is one INFO line on the `herd.guard`
logger (JSON: stage, verdict, categories with names, unsafe_probability, ms) and, given a metrics
object, counted (`guard_decision(stage, verdict, seconds)`). A conversation longer than the
guard's context is cut to its latest turns, or a very long last message checked in windows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from herd.errors import HerdError
from herd.guard.classify import CATEGORY_TOKENS, Guard, GuardResult, guard_view

REFUSAL = "I can't help with that request."
FILTERED = "content_filter"
log = logging.getLogger("herd.guard")


def unsafe(result: GuardResult | None) -> bool:
    return result is not None and result.label == "unsafe"


class Moderator:
    """A guard, the refusal text, and where decisions are counted (a ServeMetrics, or None)."""

    def __init__(self, guard: Guard, refusal: str = REFUSAL, metrics=None) -> None:
        self.guard, self.refusal, self.metrics = guard, refusal, metrics
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.guard_ready()

    @classmethod
    def load(
        cls, path, policy, threshold=0.5, refusal=REFUSAL, device=None, dtype=None, metrics=None
    ) -> Moderator:
        """The guard at `path` (any checkpoint herd loads) on `device`, under `policy`."""
        return cls(Guard.load(path, policy, threshold, device, dtype), refusal, metrics)

    def check_input_sync(self, messages: list[dict]) -> GuardResult | None:
        """The verdict on the chat's last user turn, or None when it does not end with one."""
        view = guard_view(messages)
        if not view or view[-1]["role"] != "user":
            return None
        return self._decide("input", view)

    def check_output_sync(self, messages: list[dict], reply: str) -> GuardResult | None:
        """The verdict on `reply` as the agent's answer to `messages` (None for an empty one)."""
        view = guard_view([*messages, {"role": "assistant", "content": reply}])
        if not view or view[-1]["role"] != "assistant":
            return None
        return self._decide("output", view)

    async def check_input(self, messages: list[dict]) -> GuardResult | None:
        return await asyncio.to_thread(self.check_input_sync, messages)

    async def check_output(self, messages: list[dict], reply: str) -> GuardResult | None:
        return await asyncio.to_thread(self.check_output_sync, messages, reply)

    def describe(self, stage: str, result: GuardResult) -> str:
        """'input unsafe (S9 Indiscriminate Weapons) P(unsafe)=0.99'"""
        names = ", ".join(f"{c} {self.guard.policy.name_of(c)}" for c in result.categories)
        return f"{stage} {result.label}{f' ({names})' if names else ''} " + (
            f"P(unsafe)={result.unsafe_probability:.2f}"
        )

    def _decide(self, stage: str, view: list[dict]) -> GuardResult:
        with self._lock:
            start = time.perf_counter()
            try:
                results = self.guard.classify(self._fit(view))
            except Exception as e:  # logged and counted; the caller fails closed
                log.error(json.dumps({"stage": stage, "verdict": "error", "error": repr(e)}))
                if self.metrics is not None:
                    self.metrics.guard_decision(stage, "error")
                raise
            seconds = time.perf_counter() - start
        result = max(results, key=lambda r: r.unsafe_probability)
        names = [{"code": c, "name": self.guard.policy.name_of(c)} for c in result.categories]
        p, ms = round(result.unsafe_probability, 4), round(seconds * 1000, 1)
        line = {"stage": stage, "verdict": result.label, "categories": names}
        log.info(json.dumps({**line, "unsafe_probability": p, "ms": ms}))
        if self.metrics is not None:
            self.metrics.guard_decision(stage, result.label, seconds)
        return result

    def _fit(self, view: list[dict]) -> list[list[dict]]:
        """The conversations to classify for `view`: itself when its guard prompt fits the guard's
        context (with room for the category line); else its latest turns that fit; else, for a
        last message longer than the context, that message in overlapping windows that fit, each
        after the end of the turn before it (the most unsafe window decides)."""
        guard, tok = self.guard, self.guard.tokenizer
        limit = guard.model.config.max_seq_len - CATEGORY_TOKENS - len(guard.unsafe_ids) - 1

        def fits(v: list[dict]) -> bool:
            return len(guard.prompt_ids(v)) <= limit

        keep = 1 if view[-1]["role"] == "user" else 2  # an agent turn needs the user turn before
        while not fits(view):
            if len(view) <= keep:
                break
            view = view[2:]  # drop the oldest user/assistant pair: still starting with the user
        else:
            return [view]
        *head, last = view
        head = [{**m, "content": tok.decode(tok.encode(m["content"])[-64:])} for m in head]
        room = limit - len(guard.prompt_ids([*head, {**last, "content": ""}])) - 8
        if room < 16:
            raise HerdError(f"the guard's context ({limit} tokens) cannot hold its own prompt")
        ids, step = tok.encode(last["content"]), room // 2
        # windows overlap by half, so any span of up to room/2 tokens is whole in one of them
        starts = range(0, max(len(ids) - room, 0) + step, step)
        return [[*head, {**last, "content": tok.decode(ids[s : s + room])}] for s in starts]


def load_moderator(args, policy, metrics=None) -> Moderator | None:
    """The Moderator of --guard (None without it), on --device in --dtype."""
    if policy is None:
        return None
    threshold = 0.5 if args.guard_threshold is None else args.guard_threshold
    refusal = REFUSAL if args.guard_refusal is None else args.guard_refusal
    return Moderator.load(args.guard, policy, threshold, refusal, args.device, args.dtype, metrics)
