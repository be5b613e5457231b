"""The agent's one model, as "chat messages in, a reply out": each BB3 module and each step of the
tool loop is one call of `ChatModel.complete`.

Two implementations share the encoding and the decoding:

- `LocalChat`: herd's own `generate` on a loaded model (the REPL, the study);
- `herd.serve.agent.EngineChat`: requests to a running server's continuous-batching engine, so an
  agent served by `herd serve --agent` batches with every other request.

The reply is decoded with its special tokens, because the tool loop reads them: a reply that opens
with `<|python_tag|>` and ends with `<|eom_id|>` asks for a tool (herd.agent.tool_calls). The stop
token itself is not part of the text; `Completion.stop` says which one it was.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Protocol

from herd.errors import HerdError


class Completion(NamedTuple):
    text: str  # the reply, special tokens written out, without its stop token
    stop: str  # "end_of_turn" (<|eot_id|> or end of text), "end_of_message" (<|eom_id|>), "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class ChatModel(Protocol):
    tokenizer: object
    max_seq_len: int

    def complete(
        self, messages: list[dict], max_tokens: int, temperature: float | None = None
    ) -> Completion: ...


def check_chat_tokenizer(tok) -> None:
    if tok is None:
        raise HerdError("the agent's checkpoint carries no tokenizer file")
    if tok.chat_format != "llama3":
        raise HerdError(
            f"{tok.path}: chat format {tok.chat_format!r}; the agent needs the Llama 3 format "
            "(its tool calls use <|python_tag|>, <|eom_id|> and the ipython role)"
        )


def finish(tok, prompt_len: int, ids: list[int], max_tokens: int, began: float) -> Completion:
    """A Completion from the generated ids (which may end with a stop id)."""
    eom = tok.special_tokens.get("<|eom_id|>")
    stop = "length"
    if ids and ids[-1] in tok.stop_ids:
        stop = "end_of_message" if ids[-1] == eom else "end_of_turn"
        ids = ids[:-1]
    elif len(ids) < max_tokens:
        stop = "end_of_turn"
    return Completion(
        tok.decode(ids),
        stop,
        prompt_len,
        len(ids) + (stop != "length"),
        time.perf_counter() - began,
    )


def prompt_ids(tok, messages: list[dict], max_seq_len: int, max_tokens: int) -> list[int]:
    ids = tok.encode_dialog(messages).ids
    if len(ids) + max_tokens > max_seq_len:
        raise PromptTooLong(
            f"prompt of {len(ids)} tokens + {max_tokens} to generate exceeds the model's context "
            f"of {max_seq_len} tokens"
        )
    return ids


class PromptTooLong(HerdError):
    """A module's prompt does not fit; the agent retries with fewer turns of context."""


class LocalChat:
    """`ChatModel` over a loaded herd model: greedy by default (the modules' answers are decisions
    and copies); `temperature` > 0 samples the response with a seed that advances per call, so a
    session is reproducible."""

    def __init__(
        self,
        model,
        tok,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        compile: bool | None = None,
        director=None,
    ) -> None:
        check_chat_tokenizer(tok)
        self.model = model.eval()
        self.tokenizer = tok
        self.max_seq_len = model.config.max_seq_len
        self.temperature, self.top_p, self.compile = temperature, top_p, compile
        self.seed = seed
        self.director = director  # (head, gamma): herd.agent.director decoding

    def complete(
        self, messages: list[dict], max_tokens: int, temperature: float | None = None
    ) -> Completion:
        import torch

        from herd.generation import generate

        began = time.perf_counter()
        tok = self.tokenizer
        max_tokens = min(max_tokens, self.max_seq_len - 1)
        ids = prompt_ids(tok, messages, self.max_seq_len, max_tokens)
        temp = self.temperature if temperature is None else temperature
        self.seed += 1
        with torch.inference_mode():
            if self.director is not None:
                from herd.agent.director import director_generate

                head, gamma = self.director
                out = director_generate(
                    self.model, head, ids, gamma=gamma, max_new_tokens=max_tokens,
                    temperature=temp, top_p=self.top_p, seed=self.seed, stop_ids=tok.stop_ids,
                )  # fmt: skip
            else:
                out = generate(
                    self.model, ids, max_tokens, temperature=temp, top_p=self.top_p,
                    seed=self.seed, stop_ids=tok.stop_ids, compile=self.compile,
                )  # fmt: skip
        stops = set(tok.stop_ids)
        end = next((i + 1 for i, t in enumerate(out) if t in stops), len(out))
        return finish(tok, len(ids), list(out[:end]), max_tokens, began)
