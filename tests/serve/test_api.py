"""The OpenAI API, driven by the official `openai` client against a server on a free port."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jsonschema
import openai
import pytest

from herd.serve.sampling import SamplingParams
from tests.serve.conftest import KEY, Running


@pytest.fixture(scope="module")
def srv(loaded):
    s = Running(loaded)
    yield s
    s.stop()


HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick"}]


def test_models_and_health(srv):
    assert [m.id for m in srv.client.models.list()] == ["tiny"]
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}


def test_chat_plain_and_streamed_agree(srv):
    r = srv.client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=20, temperature=0
    )
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 20 and r.usage.prompt_tokens > 5
    chunks = list(
        srv.client.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_legacy_completions_n_and_logprobs(srv):
    r = srv.client.completions.create(
        model="tiny", prompt="SELECT id", max_tokens=8, temperature=1.0, n=3, seed=4, logprobs=2
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = srv.client.completions.create(
        model="tiny", prompt="SELECT id", max_tokens=8, temperature=1.0, n=3, seed=4, logprobs=2
    )
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) >= 1
    assert all(x <= 0 for x in lp.token_logprobs) and all(
        1 <= len(t) <= 2 for t in lp.top_logprobs
    )  # keyed by text


def test_chat_logprobs(srv):
    r = srv.client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert content and all(len(c.top_logprobs) == 3 for c in content)
    # greedy: the chosen token is the likeliest
    assert all(abs(c.logprob - c.top_logprobs[0].logprob) < 1e-5 for c in content)


def test_stop_string_split_across_tokens(srv):
    free = srv.client.completions.create(model="tiny", prompt="The", max_tokens=30, temperature=0)
    text = free.choices[0].text
    assert len(text) >= 8
    stop = text[4:8]
    cut = srv.client.completions.create(
        model="tiny", prompt="The", max_tokens=30, temperature=0, stop=[stop, "\u2603"]
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = srv.client.completions.create(
        model="tiny", prompt="The", max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text[: text.find(stop)]


def test_error_statuses(srv):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as e:
        srv.client.chat.completions.create(model="gpt-4", messages=HELLO)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="context length"):
        srv.client.completions.create(model="tiny", prompt="word " * 2000, max_tokens=5)
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model="tiny", messages=HELLO, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        srv.client.chat.completions.create(model="tiny", messages=[])
    for bad, param in (
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            srv.client.chat.completions.create(model="tiny", messages=HELLO, **bad)
        assert e.value.body["param"] == param, bad
    # the penalties and logit bias are honoured (tests/serve/test_engine.py checks the formula)
    r = srv.client.completions.create(
        model="tiny", prompt="The", max_tokens=4, logit_bias={"42": 100}, frequency_penalty=1.0
    )
    assert r.choices[0].text == srv.engine.tokenizer.decode([42] * 4)
    # unknown fields are ignored, as OpenAI does
    r = srv.client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=2, extra_body={"frobnicate": 1}, user="u"
    )
    assert r.choices[0].message.role == "assistant"
    raw = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny"}, headers={})
    assert raw.status_code == 401 and set(raw.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
        "units": {"enum": ["metric", "imperial"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["city", "days", "units"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 6}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_json_schema_output_validates_on_every_request(srv):
    """A random model writes garbage; under the grammar every reply, sampled or streamed, parses
    and validates against the schema, and ends with finish_reason stop."""
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}}
    for seed in range(4):
        r = srv.client.chat.completions.create(
            model="tiny", messages=HELLO, response_format=fmt, max_tokens=200, n=2,
            temperature=1.0, seed=seed,
        )  # fmt: skip
        for choice in r.choices:
            assert choice.finish_reason == "stop", choice
            jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    stream = srv.client.chat.completions.create(
        model="tiny", messages=HELLO, response_format={"type": "json_object"}, max_tokens=200,
        stream=True, seed=9,
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)


def test_tool_call_round_trip(srv):
    """tool_choice "required": the reply is a call of the tool (finish_reason tool_calls, JSON
    arguments that validate); the tool's result sent back as role tool reaches the model, which
    answers; "none" leaves the tools out."""
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = srv.client.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=100,
        seed=1,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    r = srv.client.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=5,
        temperature=0,
    )  # fmt: skip
    assert r.choices[0].message.tool_calls is None
    assert r.usage.prompt_tokens > 20  # the call and its result are in the prompt


def test_bad_structured_output_and_tool_fields_are_400s(srv):
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                      "schema": {"type": "nope"}}}},
         "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tools": [{"type": "nope"}]}, "tools"),
    ]  # fmt: skip
    for extra, field in cases:
        with pytest.raises(openai.BadRequestError) as e:
            srv.client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, **extra)
        assert e.value.body["param"] == field, (extra, e.value.body)
        assert "\n" not in e.value.body["message"]


def test_32_concurrent_streams_with_different_parameters(srv):
    async def one(i):
        kw = dict(model="tiny", max_tokens=4 + i % 9, temperature=0 if i % 2 else 0.9, seed=i)
        if i % 3 == 0:
            kw["top_p"] = 0.8
        messages = [{"role": "user", "content": f"Request {i}: the fox"}]
        stream = await srv.aclient.chat.completions.create(
            messages=messages, stream=True, stream_options={"include_usage": True}, **kw
        )
        text, finish, usage = "", None, None
        async for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
                finish = c.choices[0].finish_reason or finish
            else:
                usage = c.usage
        return i, kw, messages, text, finish, usage

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(32)))

    for i, kw, messages, text, finish, usage in asyncio.run(all_of_them()):
        assert finish in ("stop", "length") and usage.completion_tokens <= kw["max_tokens"]
        if kw["temperature"] == 0:  # the same text as the request alone, in the engine
            alone = srv.client.chat.completions.create(messages=messages, **kw)
            assert alone.choices[0].message.content == text, i


def test_overload_gets_429_not_a_crash(loaded):
    s = Running(loaded, max_batch=1, max_queue=2)
    try:

        async def one():
            try:
                await s.aclient.completions.create(
                    model="tiny", prompt="The", max_tokens=40, temperature=1.0
                )
                return 200
            except openai.RateLimitError:
                return 429

        async def burst():
            return await asyncio.gather(*(one() for _ in range(12)))

        codes = asyncio.run(burst())
        # the queue takes 2 whatever happens; a 3rd only if the engine thread admitted one before
        # the burst filled the queue, which a busy machine (two test workers on two cores) can delay
        assert codes.count(429) >= 1 and codes.count(200) >= 2
        assert s.client.completions.create(model="tiny", prompt="The", max_tokens=2)
        metrics = httpx.get(s.url + "/metrics").text
        assert 'herd_requests_total{status="429"}' in metrics
        assert "herd_time_to_first_token_seconds_count" in metrics
    finally:
        s.stop()


def test_loading_then_draining(loaded):
    s = Running(loaded, load=False)
    try:
        assert httpx.get(s.url + "/health").status_code == 503
        with pytest.raises(openai.InternalServerError):  # 503 while loading
            s.client.models.list() and s.client.completions.create(
                model="tiny", prompt="x", max_tokens=1
            )
        s.state.set_engine(s.engine.start())
        stream = s.client.completions.create(
            model="tiny",
            prompt="The",
            max_tokens=60,
            temperature=0.8,
            stream=True,
            extra_body={"top_k": 3},
        )
        first = next(iter(stream))
        s.server.handle_exit(15, None)  # SIGTERM: drain
        assert s.state.draining
        with pytest.raises(openai.InternalServerError):
            s.client.completions.create(model="tiny", prompt="x", max_tokens=1)
        rest = list(stream)  # the request in flight still completes
        assert rest[-1].choices[0].finish_reason in ("stop", "length") and first.choices
        s.thread.join(10)
        assert not s.thread.is_alive()
    finally:
        s.stop()


def test_client_disconnect_frees_the_slot(loaded):
    s = Running(loaded, max_batch=1)
    try:
        with httpx.stream(
            "POST",
            s.url + "/v1/completions",
            json={
                "model": "tiny",
                "prompt": "The",
                "max_tokens": 200,
                "stream": True,
                "temperature": 1.0,
                "top_k": 3,
                "seed": 0,
            },
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r:
            next(r.iter_lines())
        deadline = time.monotonic() + 5
        while any(s.engine.counts()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.engine.counts() == (0, 0)
        params = SamplingParams(max_tokens=2)
        assert s.engine.submit([1, 2, 3], params, lambda d: None)
    finally:
        s.stop()
