"""One API request on the engine: submitting its choices, relaying their deltas from the engine
thread to the event loop, cancelling them when the client goes away; and the API's error type."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from fastapi.responses import JSONResponse

from herd.errors import HerdError
from herd.serve import protocol as p
from herd.serve.engine import Engine, QueueFull, RequestError
from herd.serve.sampling import SamplingParams

_KIND = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = _KIND.get(self.status, "server_error" if self.status >= 500 else "rate_limit_error")
        if self.status == 503:
            kind = "service_unavailable_error"
        body = p.error_body(self.message, kind, self.param, self.code)
        return JSONResponse(body, status_code=self.status)


class Generation:
    """Runs one API request's choices on the engine and relays their deltas to an asyncio queue."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: asyncio.Queue = asyncio.Queue()
        self.seqs: list = []
        self.open = 0

    def start(
        self, prompts: list[list[int]], params: list[SamplingParams], media: dict | None = None
    ) -> None:
        """Submit the choices; `media` (Engine.submit's `images`, `video` or `audio`) go with
        every one."""
        loop = asyncio.get_running_loop()
        try:
            for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):

                def sink(delta, i=i):
                    loop.call_soon_threadsafe(self.queue.put_nowait, (i, delta))

                self.seqs.append(self.engine.submit(prompt, sp, sink, **(media or {})))
                self.open += 1
        except (RequestError, QueueFull) as e:
            self.cancel()
            if isinstance(e, QueueFull):
                raise APIError(429, str(e), code="rate_limit_exceeded") from None
            raise APIError(400, str(e), param="messages", code="context_length_exceeded") from None
        except HerdError as e:
            self.cancel()
            raise APIError(400, str(e)) from None

    async def deltas(self):
        """(choice index, Delta) until every choice has finished."""
        while self.open:
            i, delta = await self.queue.get()
            if delta.finish_reason is not None:
                self.open -= 1
            yield i, delta

    async def collect(self, request: Request) -> list[list]:
        """Every choice's deltas; cancels all if the client disconnects first."""
        out: list[list] = [[] for _ in self.seqs]

        async def gather():
            async for i, delta in self.deltas():
                out[i].append(delta)

        task = asyncio.ensure_future(gather())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    raise APIError(499, "client disconnected")
            return out
        finally:
            self.cancel()

    def cancel(self) -> None:
        for seq in self.seqs:
            if not seq.done:
                self.engine.cancel(seq)


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
