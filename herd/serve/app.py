"""The OpenAI-compatible HTTP API over the engine: routes, SSE streaming, errors and auth.

Every error is OpenAI's object `{"error": {"message", "type", "param", "code"}}`: 400 invalid
request, 401 bad key, 404 unknown model or route, 429 queue full, 503 loading or shutting down.
A client that disconnects (mid-stream, or while waiting for a whole response) has its requests
cancelled, which frees their KV slots at the engine's next token boundary.

`response_format` (json_object, json_schema) and forced tool calls (`tool_choice` "required" or a
named function) decode under a grammar mask (herd/serve/constraints.py, llguidance); `tools` are
written into the prompt and replies parsed into `tool_calls` as Llama 3.1 does (herd/serve/tools.py).
With a safety guard (`--guard`), requests and replies are checked (herd/serve/moderation.py).
A vision model's chat requests may show pictures as `image_url` parts, a video model's also a
`video_url` part, a speech model's clips as `input_audio` parts (herd/serve/media.py).
With `--agent`, a second model name runs the agent (herd/serve/agent.py), and
`POST /v1/agent/feedback` rates its replies.

`GET /` is the chat page (herd/serve/web/index.html): one static file that calls the API above from
the browser. It needs no key to load; its requests carry the key the user types into it.
"""

from __future__ import annotations

import hmac
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from herd.guard.moderator import Moderator
from herd.serve import protocol as p
from herd.serve.agent import FeedbackRequest
from herd.serve.completions import ChatCompletion, TextCompletion
from herd.serve.engine import Engine
from herd.serve.metrics import ServeMetrics
from herd.serve.relay import APIError


class ServerState:
    """What the routes share: the engine (None while the model loads), names, key, metrics, and
    the safety guard's Moderator (None: no guard)."""

    def __init__(self, model_name: str, api_key: str | None = None) -> None:
        self.model_name = model_name
        self.api_key = api_key
        self.engine: Engine | None = None
        self.moderator: Moderator | None = None
        self.agent = None  # herd.serve.agent.AgentService with --agent
        # the folder `file://` image and video URLs and paths may name (--allowed-local-media-path)
        self.local_media: Path | None = None
        self.metrics = ServeMetrics()
        self.draining = False
        self.created = p.now()

    def set_engine(self, engine: Engine) -> None:
        self.engine = engine
        self.metrics.watch(engine)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="herd", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.herd = state

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
        return APIError(400, message, param=loc[0] if loc else None).response()

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next):
        # the key is checked before the body is parsed, so a bad key is a 401 whatever the body
        api = request.url.path.startswith("/v1/")
        try:
            if api:
                _authorize(state, request)
            response = await call_next(request)
        except APIError as e:
            response = e.response()
        if api:
            state.metrics.requests.labels(str(response.status_code)).inc()
        return response

    page = resources.files("herd.serve").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/")
    async def chat_page():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        if state.engine is None or state.draining:
            status = "loading" if state.engine is None else "draining"
            return JSONResponse({"status": status}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        cards = [_model_card(state)]
        if state.agent is not None:
            cards.append({**cards[0], "id": state.agent.name})
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions")
    async def chat(body: p.ChatCompletionRequest, request: Request):
        engine = _ready(state, body.model)
        if state.agent is not None and body.model == state.agent.name:
            return await state.agent.chat(engine, body)
        return await ChatCompletion(state, engine, body).respond(request)

    @app.post("/v1/agent/feedback")
    async def agent_feedback(body: FeedbackRequest):
        if state.agent is None:
            raise APIError(404, "this server runs no agent (start it with --agent)")
        return await state.agent.feedback(body)

    @app.post("/v1/completions")
    async def completions(body: p.CompletionRequest, request: Request):
        engine = _ready(state, body.model)
        return await TextCompletion(state, engine, body).respond(request)

    return app


def _model_card(state: ServerState) -> dict:
    card = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "herd"}
    if state.engine is not None:
        card["max_model_len"] = state.engine.max_model_len
    return card


def _authorize(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), state.api_key.encode()):
        raise APIError(401, "incorrect API key provided", code="invalid_api_key")


def _ready(state: ServerState, model: str) -> Engine:
    if state.draining:
        raise APIError(503, "the server is shutting down")
    if state.engine is None:
        raise APIError(503, "the model is still loading")
    names = [state.model_name] + ([state.agent.name] if state.agent is not None else [])
    if model not in names:
        raise APIError(
            404,
            f"the model '{model}' does not exist (this server has {', '.join(map(repr, names))})",
            param="model",
            code="model_not_found",
        )
    return state.engine
