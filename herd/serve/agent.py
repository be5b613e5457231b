"""`herd serve --agent`: the agent of `herd agent` as a second model name of the server.

A chat completion whose `model` is the agent's name (`--agent-name`, default "<model>-agent") runs
one agent turn (herd/agent/agent.py) instead of one generation: the modules, search, memory and
tools all run server-side, each model call a request to the same continuous-batching engine as
every other client's (`EngineChat`). The reply is an ordinary chat completion; its `agent` field
(an extension that OpenAI clients keep in `model_extra`) carries the turn's id, the module
decisions and the tool calls with their results. `stream: true` sends the finished reply as one
chunk: an agent turn is several generations, and the reply is known only at the end (as a guarded
reply is held until checked).

Memory is per OpenAI `user` (the request field; "default" without one): one Agent per user, one
turn at a time per user, all in the --memory file. `POST /v1/agent/feedback` with `{"turn": id,
"rating": "good"|"bad", "feedback"?: str, "correction"?: str}` stores a rating with the turn, as
`/good`, `/bad` and `/fix` do in the REPL. Client-side `tools` are refused: the agent's tools are
its own (--tools, the code interpreter, brave_search).
"""

from __future__ import annotations

import asyncio
import threading
import time

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from herd.agent.llm import finish, prompt_ids
from herd.errors import HerdError
from herd.serve import protocol as p
from herd.serve.relay import APIError
from herd.serve.sampling import SamplingParams


class EngineChat:
    """`ChatModel` over the server's engine: each call is one request, waited for on the calling
    (worker) thread while the engine batches it with everything else."""

    def __init__(
        self, engine, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None
    ):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_seq_len = engine.max_model_len
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.prompt_tokens = self.completion_tokens = 0  # since the last reset (one turn's usage)

    def complete(self, messages: list[dict], max_tokens: int, temperature: float | None = None):
        began = time.perf_counter()
        tok = self.tokenizer
        ids = prompt_ids(tok, messages, self.max_seq_len, max_tokens)
        done = threading.Event()
        reasons: list[str] = []

        def sink(delta) -> None:
            if delta.finish_reason is not None:
                reasons.append(delta.finish_reason)
                done.set()

        temp = self.temperature if temperature is None else temperature
        params = SamplingParams(max_tokens, temp, self.top_p, seed=self.seed)
        seq = self.engine.submit(ids, params, sink)
        done.wait()
        if reasons[0] == "error":
            raise HerdError("the engine failed on an agent request")
        out = finish(tok, len(ids), list(seq.generated), max_tokens, began)
        self.prompt_tokens += out.prompt_tokens
        self.completion_tokens += out.completion_tokens
        return out


class FeedbackRequest(p._Body):
    turn: int
    rating: str = Field(pattern="^(good|bad)$")
    feedback: str | None = None
    correction: str | None = None


class AgentService:
    """The agent's parts, shared by every user's Agent, and the Agents themselves."""

    def __init__(self, args, name: str, search, toolbox, moderator) -> None:
        self.args, self.name = args, name
        self.search, self.toolbox, self.moderator = search, toolbox, moderator
        self._agents: dict[str, tuple] = {}
        self._log = None
        self._lock = threading.Lock()

    def agent(self, engine, user: str):
        from herd.agent.repl import make_agent

        with self._lock:
            if user not in self._agents:
                chat = EngineChat(engine)
                agent = make_agent(self.args, chat, user, self.search, self.toolbox, self.moderator)
                self._agents[user] = (agent, threading.Lock())
            return self._agents[user]

    def log(self):
        """The turn log ratings go to: any store on the file rates any user's turn by id, so one
        is opened, once, and kept."""
        from herd.agent.memory import MemoryStore
        from herd.agent.traces import TurnLog

        with self._lock:
            if self._log is None:
                self._log = TurnLog(MemoryStore(self.args.memory, "default"))
            return self._log

    async def chat(self, engine, body) -> JSONResponse | StreamingResponse:
        if body.tools:
            raise APIError(
                400, f"tools: the agent '{self.name}' uses its own tools (--tools)", param="tools"
            )
        if body.n != 1:
            raise APIError(400, "n: the agent answers one reply per request", param="n")
        try:
            messages = [m.as_dialog() for m in body.messages]
        except ValueError as e:
            raise APIError(400, f"messages: {e}", param="messages") from None
        context = [m for m in messages if m["role"] in ("user", "assistant")]
        if not context or context[-1]["role"] != "user":
            raise APIError(400, "messages: the agent answers a last user message", param="messages")
        agent, lock = self.agent(engine, body.user or "default")

        def turn():
            with lock:
                agent.chat.prompt_tokens = agent.chat.completion_tokens = 0
                done = agent.respond(context, body.max_completion_tokens or body.max_tokens)
                return done, p.usage(agent.chat.prompt_tokens, agent.chat.completion_tokens)

        try:
            done, usage = await asyncio.to_thread(turn)
        except HerdError as e:
            raise APIError(400, str(e), param="messages") from None
        reason = "content_filter" if done.flagged else "stop"
        extra = {"turn": done.id, "decisions": done.decisions, "tools": done.tools,
                 "flagged": done.flagged}  # fmt: skip
        cid, created = p.new_id("chatcmpl"), p.now()
        message = {"role": "assistant", "content": done.reply}
        if body.stream:
            return StreamingResponse(_one_chunk(cid, created, self.name, message, reason, extra),
                                     media_type="text/event-stream")  # fmt: skip
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": self.name,
            "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
            "usage": usage, "agent": extra,
        })  # fmt: skip

    async def feedback(self, body: FeedbackRequest) -> dict:
        try:
            record = await asyncio.to_thread(
                self.log().rate, body.turn, body.rating, body.feedback, body.correction
            )
        except HerdError as e:
            raise APIError(
                404 if "no agent turn" in str(e) else 400, str(e), param="turn"
            ) from None
        return {"turn": record.id, "rating": body.rating, "stored": True}


async def _one_chunk(cid, created, name, message, reason, extra):
    import json

    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name}
    first = {**head, "choices": [{"index": 0, "delta": message, "finish_reason": None}]}
    last = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}], "agent": extra}
    yield f"data: {json.dumps(first)}\n\n"
    yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"
