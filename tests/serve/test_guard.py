"""`herd serve --guard`: the tiny keyword guard (tests/guard_model.py) in front of the tiny served
model, driven by the official `openai` client. An unsafe request gets the refusal without running
the model, an unsafe reply is replaced (finish_reason content_filter), a safe request is answered
as without a guard; each decision is counted in /metrics and logged on `herd.guard`."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest

from herd.guard.classify import CATEGORY_TOKENS
from herd.guard.moderator import REFUSAL, Moderator
from tests.e2e.cli_runner import herd_cli_inprocess, one_line_error
from tests.guard_model import CATEGORIES
from tests.serve.conftest import Running, free_port
from tests.serve.test_cli import wait_until_healthy

BOMB = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How do I make a bomb?"},
]
CAKE = [{"role": "user", "content": "How do I make a cake?"}]
# A reply the guard finds unsafe, put in the model's mouth by a JSON-schema grammar (constrained
# decoding, herd/serve/constraints.py): a real generation whatever the model's weights.
BOMB_REPLY = "Sure, here is how to make a bomb: start with the bomb parts."
FORCED = {"type": "json_schema", "json_schema": {"name": "reply", "schema": {"enum": [BOMB_REPLY]}}}


@pytest.fixture(scope="module")
def plain(loaded):
    s = Running(loaded)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def guarded(loaded, guard):
    s = Running(loaded, guard=guard)
    yield s
    s.stop()


def metrics(srv) -> dict[str, float]:
    """/metrics as {'name{labels}': value} (samples only)."""
    text = httpx.get(srv.url + "/metrics").text
    return {
        k: float(v)
        for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def decisions(srv, stage: str, verdict: str) -> float:
    return metrics(srv)[f'herd_guard_decisions_total{{stage="{stage}",verdict="{verdict}"}}']


def chat(srv, messages, stream=False, **kw):
    """(contents, finish reasons, usage) of a greedy chat completion, streamed or not."""
    kw = {"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0, **kw}
    if not stream:
        r = srv.client.chat.completions.create(**kw)
        return [c.message.content for c in r.choices], [c.finish_reason for c in r.choices], r.usage
    n = kw.get("n", 1)
    chunks = list(
        srv.client.chat.completions.create(
            **kw, stream=True, stream_options={"include_usage": True}
        )
    )
    texts, reasons = [""] * n, [None] * n
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert chunks[-1].choices == []
    return texts, reasons, chunks[-1].usage


def test_unsafe_request_is_refused_without_running_the_model(guarded, caplog):
    caplog.set_level(logging.INFO, logger="herd.guard")
    before = metrics(guarded)
    for stream in (False, True):
        texts, reasons, usage = chat(guarded, BOMB, stream=stream, n=2)
        assert texts == [REFUSAL, REFUSAL] and reasons == ["content_filter"] * 2
        assert usage.completion_tokens == 0 and usage.prompt_tokens > 0
    legacy = guarded.client.completions.create(model="tiny", prompt="Where can I get poison?")
    assert legacy.choices[0].text == REFUSAL
    assert legacy.choices[0].finish_reason == "content_filter"
    after = metrics(guarded)
    # the engine saw none of it
    for name in ("herd_prompt_tokens_total", "herd_generation_tokens_total"):
        assert after[name] == before[name]
    key = 'herd_guard_decisions_total{stage="input",verdict="unsafe"}'
    assert after[key] == before[key] + 3
    assert after['herd_guard_seconds_count{stage="input"}'] >= 3
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "herd.guard"]
    assert len(lines) == 3
    line = lines[0]
    assert line["stage"] == "input" and line["verdict"] == "unsafe"
    assert line["unsafe_probability"] >= 0.5 and line["ms"] > 0
    assert line["categories"] and {"code", "name"} <= set(line["categories"][0])
    assert line["categories"][0]["name"] in ("Violent Crimes", "Indiscriminate Weapons")


def test_safe_request_is_answered_as_without_a_guard(plain, guarded):
    before = decisions(guarded, "output", "safe")
    for stream in (False, True):
        texts, reasons, usage = chat(guarded, CAKE, stream=stream)
        assert (texts, reasons) == chat(plain, CAKE, stream=stream)[:2]
        assert reasons[0] in ("stop", "length") and usage.completion_tokens > 0
    assert decisions(guarded, "input", "safe") >= 2
    assert decisions(guarded, "output", "safe") == before + 2
    legacy = [
        s.client.completions.create(model="tiny", prompt="A cake", max_tokens=8, temperature=0)
        for s in (plain, guarded)
    ]
    assert legacy[0].choices[0].text == legacy[1].choices[0].text
    assert legacy[1].choices[0].finish_reason in ("stop", "length")


def test_unsafe_reply_is_replaced(plain, guarded):
    unguarded = chat(plain, CAKE, response_format=FORCED, max_tokens=120)
    assert json.loads(unguarded[0][0]) == BOMB_REPLY  # the grammar made the model say it
    before = decisions(guarded, "output", "unsafe")
    for stream in (False, True):
        texts, reasons, usage = chat(
            guarded, CAKE, stream=stream, response_format=FORCED, max_tokens=120
        )
        assert texts == [REFUSAL] and reasons == ["content_filter"]
        assert usage.completion_tokens == unguarded[2].completion_tokens  # the model did run
    assert decisions(guarded, "output", "unsafe") == before + 2


def test_a_custom_refusal_and_nothing_new_from_the_user(loaded, guard):
    srv = Running(loaded)
    srv.state.moderator = Moderator(guard, refusal="No.", metrics=srv.state.metrics)
    try:
        assert chat(srv, BOMB)[:2] == (["No."], ["content_filter"])
        # the chat ends with the assistant's turn: no input check (the bomb question was checked
        # when it was asked); the reply is still checked
        after = [*BOMB, {"role": "assistant", "content": "No."}]
        assert srv.state.moderator.check_input_sync(after) is None
        assert srv.state.moderator.check_input_sync([BOMB[0]]) is None  # a system prompt alone
    finally:
        srv.stop()


def short_context(guard, tokens: int):
    """A copy of `guard` whose context is `tokens` long."""
    short = copy.copy(guard)
    short.model = copy.deepcopy(guard.model)
    short.model.config = dataclasses.replace(guard.model.config, max_seq_len=tokens)
    return short


def test_conversations_longer_than_the_guards_context(guard):
    """Older turns are dropped to fit the guard's context; a message longer than that is assessed
    in overlapping windows, the most unsafe one deciding. (The keyword guard learned on short
    messages that end with the word that matters, so its context is cut to 300 tokens here: a
    window then holds a few sentences, as its training rows did.)"""
    m = Moderator(short_context(guard, 300))
    cakes = "I want a cake. " * 30
    history = [{"role": r, "content": cakes} for r in ("user", "assistant") * 3]
    assert m.check_input_sync([*history, *CAKE]).label == "safe"
    assert m.check_input_sync([*history, BOMB[1]]).label == "unsafe"
    assert m.check_input_sync([{"role": "user", "content": cakes * 2}]).label == "safe"
    long_bomb = cakes + BOMB[1]["content"]
    assert m.check_input_sync([{"role": "user", "content": long_bomb}]).label == "unsafe"
    assert m.check_output_sync(CAKE, cakes + BOMB_REPLY).label == "unsafe"
    assert m.check_output_sync(CAKE, cakes).label == "safe"


def test_a_failing_guard_fails_closed(loaded, guard):
    """A guard whose context holds the cake question's prompt with two tokens to spare but not its
    own prompt around a reply: the input passes, the output check fails and the reply is not
    shown; a longer question fails the input check, and the request with it (HTTP 500)."""
    spare = len(guard.prompt_ids(CAKE)) + CATEGORY_TOKENS + len(guard.unsafe_ids) + 3
    srv = Running(loaded, guard=short_context(guard, spare))
    try:
        assert chat(srv, CAKE)[:2] == ([REFUSAL], ["content_filter"])
        generated = metrics(srv)["herd_generation_tokens_total"]
        with pytest.raises(openai.InternalServerError, match="safety guard failed"):
            chat(srv, [{"role": "user", "content": "How do I make a cake for my aunt? " * 3}])
        assert decisions(srv, "output", "error") == 1 and decisions(srv, "input", "error") == 1
        assert metrics(srv)["herd_generation_tokens_total"] == generated > 0
    finally:
        srv.stop()


def test_serve_process_with_a_guard(tiny_guard):
    """`herd serve --guard` as a process (the tiny guard also serves as the model: its tokenizer
    has the Llama 3 chat format): the refusal, and the decision's line on stderr."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "serve", str(tiny_guard), "--port", str(port),
         "--served-model-name", "tiny", "--device", "cpu", "--threads", "1", "--guard",
         str(tiny_guard), "--guard-categories", CATEGORIES, "--guard-refusal", "No."],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=BOMB, max_tokens=4)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (
            "No.",
            "content_filter",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        line = next(x for x in proc.stderr.read().splitlines() if x.startswith("INFO:     guard {"))
        assert json.loads(line.split("guard ", 1)[1])["verdict"] == "unsafe"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_guard_options_fail_in_one_line(checkpoint, tmp_path):
    proc = herd_cli_inprocess("serve", checkpoint, "--guard", tmp_path / "nope", check=False)
    one_line_error(proc, "--guard", "nope", "no such file")
    proc = herd_cli_inprocess("serve", checkpoint, "--guard-threshold", "0.3", check=False)
    one_line_error(proc, "--guard-threshold needs --guard")
