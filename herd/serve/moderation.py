"""A safety guard in front of a served model (`herd serve --guard`, `herd chat --guard`): a Llama
Guard 3 style guard (herd/guard/classify.py) checks what the user sends and what the model answers.

Input: before a request reaches the engine, the guard assesses the chat's last user turn as the
guard sees the chat (`guard_view`: system and tool messages left out); no user turn last means
nothing new from the user, and no check. An unsafe input is answered with the refusal and
finish_reason "content_filter" without running the model. Output: each finished choice's whole
reply (before tool-call parsing) is assessed as the agent's answer to that chat; an unsafe one is
replaced by the refusal, again with "content_filter". A legacy completion's prompt is checked as
a user turn and its text as the agent's reply. A failed check fails closed: an input check gives
an HTTP 500, an output check the refusal.

Streaming trade-off: a reply cannot be withdrawn once its tokens are sent, so with a guard a
choice's text is held until it has finished and passed its output check, then sent as one chunk.
Streamed clients keep the protocol (role chunk, content, finish chunk, usage, [DONE]) but lose
token-by-token delivery; time to first token becomes the whole reply's time plus a check.

Checks run one at a time (the guard model is not shared-batch safe) on a worker thread, so the
event loop keeps serving streams. Each decision is one INFO line on the `herd.guard` logger (JSON:
stage, verdict, categories with names, unsafe_probability, ms) and counted in the server's
metrics (herd_guard_decisions_total by stage and verdict, herd_guard_seconds by stage).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import replace

from herd.errors import HerdError
from herd.guard.classify import CATEGORY_TOKENS, Guard, GuardResult, guard_view
from herd.serve.engine import Delta

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

    async def start(self, engine, prompts, params, dialogs) -> GuardedGeneration:
        """The request's choices started on `engine` (choice i is the reply to `dialogs[i]`), or
        refused without running when an input is unsafe (one check per distinct input)."""
        from herd.serve.relay import APIError, Generation  # here: `herd chat` needs no fastapi

        gen = GuardedGeneration(Generation(engine), self, dialogs)
        seen = []
        for dialog in dialogs:
            if dialog not in seen:
                seen.append(dialog)
                try:
                    result = await self.check_input(dialog)
                except Exception as e:  # the request fails rather than reach the model unchecked
                    raise APIError(500, f"the safety guard failed: {e!r}") from e
                if unsafe(result):
                    gen.refused = True
                    return gen
        gen.inner.start(prompts, params)
        return gen


class GuardedGeneration:
    """A Generation (relay.py) whose choices are released whole, after their output checks:
    each choice gives one delta (its text and tokens, or the refusal) when it finishes."""

    def __init__(self, inner, moderator: Moderator, dialogs: list[list[dict]]) -> None:
        self.inner, self.moderator, self.dialogs = inner, moderator, dialogs
        self.refused = False  # the input was unsafe: every choice is the refusal, nothing ran

    async def deltas(self):
        if self.refused:
            for i in range(len(self.dialogs)):
                yield i, Delta(self.moderator.refusal, [], FILTERED)
            return
        held: dict[int, list[Delta]] = {}
        async for i, d in self.inner.deltas():
            held.setdefault(i, []).append(d)
            if d.finish_reason is not None:
                yield i, await self._release(i, held.pop(i))

    async def collect(self, request) -> list[list[Delta]]:
        if self.refused:
            return [[d] async for _, d in self.deltas()]
        whole = await self.inner.collect(request)  # (it cancels all if the client goes away)
        return [[await self._release(i, parts)] for i, parts in enumerate(whole)]

    async def _release(self, i: int, parts: list[Delta]) -> Delta:
        """Choice i's deltas as one: its whole text, or the refusal when the guard says unsafe."""
        last, text = parts[-1], "".join(x.text for x in parts)
        try:
            refuse = unsafe(await self.moderator.check_output(self.dialogs[i], text))
        except Exception:  # fail closed: a reply the guard could not check is not shown
            refuse = True
        if refuse:
            # the model ran: its tokens still count in usage; its text and logprobs do not show
            return replace(last, text=self.moderator.refusal, tokens=[], finish_reason=FILTERED)
        return replace(last, text=text, tokens=[t for x in parts for t in x.tokens])

    def cancel(self) -> None:
        self.inner.cancel()
