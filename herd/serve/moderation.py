"""A safety guard in front of a served model (`herd serve --guard`): the guard's Moderator
(herd/guard/moderator.py) checks what the user sends and what the model answers.

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

from dataclasses import replace

from herd.guard.moderator import FILTERED, Moderator, unsafe
from herd.serve.engine import Delta
from herd.serve.relay import APIError, Generation


async def start_guarded(
    moderator: Moderator, engine, prompts, params, dialogs, media=None
) -> GuardedGeneration:
    """The request's choices started on `engine` (choice i is the reply to `dialogs[i]`, each
    with `media`: Engine.submit's images, video or audio), or refused without running when an
    input is unsafe (one check per distinct input)."""

    gen = GuardedGeneration(Generation(engine), moderator, dialogs)
    seen = []
    for dialog in dialogs:
        if dialog not in seen:
            seen.append(dialog)
            try:
                result = await moderator.check_input(dialog)
            except Exception as e:  # the request fails rather than reach the model unchecked
                raise APIError(500, f"the safety guard failed: {e!r}") from e
            if unsafe(result):
                gen.refused = True
                return gen
    gen.inner.start(prompts, params, media)
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
