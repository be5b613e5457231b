"""The OpenAI API's request bodies (pydantic) and response objects (plain dicts).

Fields OpenAI defines but herd does not implement are ignored, as OpenAI ignores fields it does not
know, so clients that always send them (user, store, ...) work; a field herd reads with a wrong
type or range is a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from herd.serve.engine import TokenInfo

# the content parts that carry media: a picture (a vision model's), a clip (a speech model's),
# a video (a video model's)
MEDIA_PARTS = ("image_url", "input_audio", "video_url")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def as_dialog(self, media: list[tuple[str, dict]] | None = None, field: str = "") -> dict:
        """The message as herd's chat formatting takes it (herd.tokenizer.chat): its text parts
        joined. `media`: where its `image_url` and `input_audio` parts go, as (the part's name
        in errors, the part), with `field` naming the message (`messages[2]`); without it they
        are refused.
        """
        content = self.content
        if isinstance(content, list):  # content parts: text, and media where asked for
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type")
                if kind in MEDIA_PARTS and media is not None:
                    media.append((f"{field}.content[{j}]", part))
                    continue
                if kind != "text" or not isinstance(part.get("text"), str):
                    what = (
                        "text, image_url, input_audio and video_url"
                        if media is not None
                        else "only text"
                    )
                    raise ValueError(f"content[{j}]: {what} content parts are supported")
                parts.append(part["text"])
            content = "".join(parts)
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": content or ""}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out

    def pieces(self, field: str) -> list:
        """Its content parts in order (after `as_dialog` accepted them), as herd.tokenizer.chat's
        pictured content: each text, and (name, part) for each picture or clip where it stands."""
        return [
            p["text"] if p.get("type") == "text" else (f"{field}.content[{j}]", p)
            for j, p in enumerate(self.content)
        ]


class _Sampling(_Body):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # an extension (vLLM's): -1 or 0 = off
    n: int = Field(1, ge=1, le=64)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        for token, bias in (v or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids, got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"token {token}: bias {bias} outside [-100, 100]")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 16:
            raise ValueError("at most 16 stop sequences")
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None  # whose long-term memory, for the agent (herd serve --agent)

    @field_validator("response_format")
    @classmethod
    def _format(cls, v):
        if v is not None and v.get("type") not in ("text", "json_object", "json_schema"):
            raise ValueError("type must be 'text', 'json_object' or 'json_schema'")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v):
        for tool in v or []:
            fn = tool.get("function")
            if tool.get("type") != "function" or not isinstance(fn, dict) or "name" not in fn:
                raise ValueError(
                    'each tool must be {"type": "function", "function": {"name", ...}}'
                )
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v):
        if isinstance(v, str) and v not in ("none", "auto", "required"):
            raise ValueError("must be 'none', 'auto', 'required' or a named function")
        return v


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def chat_logprobs(tokens: list[TokenInfo], piece) -> dict:
    """`choices[i].logprobs` of a chat completion; `piece(id)` is a token's text."""

    def entry(i: int, lp: float) -> dict:
        text = piece(i)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
            for t in tokens
        ]
    }


def completion_logprobs(tokens: list[TokenInfo], piece, offset: int) -> dict:
    """`choices[i].logprobs` of a legacy completion: parallel lists, text offsets from `offset`."""
    texts = [piece(t.id) for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{piece(i): lp for i, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }
