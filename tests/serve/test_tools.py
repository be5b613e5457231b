"""herd/serve/tools.py against Meta's references: the Llama 3.1 Instruct chat template (TRL ships
Meta's template as trl/chat_templates/llama3_1.jinja, rendered here by transformers) for the
prompt, and llama-models' ToolUtils for the call format and for reading replies."""

from __future__ import annotations

import datetime
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import torch
from transformers.utils.chat_template_utils import render_jinja_template

import herd
from herd.serve.tools import (
    parse_tool_calls,
    resolve_tool_choice,
    tool_call_grammar,
    tool_prompt,
)
from tests import references
from tests.serve.test_constraints import sample, tiny_model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Hour of the day in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"offset": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["offset"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
DATE = datetime.date(2024, 7, 26)


@pytest.fixture(scope="module")
def llama3():
    return herd.load_tokenizer(references.llama3_tokenizer())


@pytest.fixture(scope="module")
def meta_template() -> str:
    trl = Path(next(iter(importlib.util.find_spec("trl").submodule_search_locations)))
    return (trl / "chat_templates" / "llama3_1.jinja").read_text(encoding="utf-8")


def render_meta(template: str, messages: list[dict], tools) -> str:
    return render_jinja_template(
        [messages],
        tools=tools,
        chat_template=template,
        add_generation_prompt=True,
        bos_token="<|begin_of_text|>",
        date_string=DATE.strftime("%d %b %Y"),
    )[0][0]


def herd_text(tok, messages: list[dict]) -> str:
    return tok.decode(tok.encode_dialog(messages).ids)


@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_prompt_matches_meta_template(llama3, meta_template, system):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    ours = herd_text(llama3, tool_prompt(messages, TOOLS, "auto", date=DATE))
    assert ours == render_meta(meta_template, messages, TOOLS)
    assert "Environment: ipython\n" in ours and '"name": "get_time"' in ours


def test_round_trip_call_and_result(llama3, meta_template):
    from llama_models.datatypes import ToolCall, ToolPromptFormat
    from llama_models.llama3.tool_utils import ToolUtils

    question = {"role": "user", "content": "Weather in Oslo?"}
    reply = (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}'
    )
    calls = parse_tool_calls(reply, TOOLS)
    assert len(calls) == 1 and calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = json.loads(calls[0]["function"]["arguments"])
    assert arguments == {"city": "Oslo", "unit": "celsius"}
    # llama-models reads the same reply (without the tag the engine strips as a special token).
    assert ToolUtils.maybe_extract_custom_tool_call(reply.removeprefix("<|python_tag|>")) == (
        "get_weather",
        arguments,
    )

    # The next request carries the call and its result; the result is an ipython turn.
    result = {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temp": 4}'}
    turn = {"role": "assistant", "content": None, "tool_calls": calls}
    messages = [question, turn, result]
    ours = herd_text(llama3, tool_prompt(messages, TOOLS, "auto", date=DATE))
    assert ours.endswith(
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 4}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Meta's template writes the call as {"name", "parameters"}; herd's chat format writes it as
    # llama-models' ChatFormat does (ToolPromptFormat.json, with "type": "function"). Apart from
    # that, the two conversations are the same text.
    meta_turn = {
        **turn,
        "tool_calls": [{"function": {"name": "get_weather", "arguments": arguments}}],
    }
    # (The template JSON-quotes a string result, strings being iterable in Jinja; llama-models
    # and herd write it as it is, which the template writes for a mapping.)
    meta_result = {**result, "content": json.loads(result["content"])}
    theirs = render_meta(meta_template, [question, meta_turn, meta_result], TOOLS)
    call = ToolCall(call_id="0", tool_name="get_weather", arguments=arguments)
    llama_models_call = ToolUtils.encode_tool_call(call, ToolPromptFormat.json)
    meta_call = json.dumps({"name": "get_weather", "parameters": arguments})
    assert ours == theirs.replace(meta_call, llama_models_call)


@pytest.mark.parametrize(
    "reply",
    [
        '{"name": "get_time", "parameters": {"offset": 2}}',
        '<|python_tag|>{"type": "function", "name": "get_time", "parameters": {"offset": 2}}<|eom_id|>',
        '  {"name": "get_time", "arguments": {"offset": 2}}\n',
    ],
)
def test_single_call_forms(reply):
    calls = parse_tool_calls(reply, TOOLS)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_time", {"offset": 2})
    ]


@pytest.mark.parametrize(
    "reply",
    [
        '{"name": "get_time", "parameters": {"offset": 2}}; '
        '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}',
        '{"name": "get_time", "parameters": {"offset": 2}}\n'
        '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}',
        '[{"name": "get_time", "parameters": {"offset": 2}}, '
        '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}]',
    ],
)
def test_several_calls(reply):
    calls = parse_tool_calls(reply, TOOLS)
    assert [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize(
    "reply",
    [
        "It is sunny in Paris.",
        '{"name": "get_time", "parameters": {"offset": 2}',  # cut short
        '{"name": "get_stock", "parameters": {}}',  # not one of the tools
        '{"name": "get_time", "parameters": "offset=2"}',
        '{"type": "code", "name": "get_time", "parameters": {}}',
        'Sure: {"name": "get_time", "parameters": {"offset": 2}}',  # prose around a call
        '{"name": "get_time", "parameters": {"offset": 2}} and then some prose',
        "[]",
        '"get_time"',
        "",
    ],
)
def test_malformed_replies_are_content(reply):
    assert parse_tool_calls(reply, TOOLS) is None


def test_without_tools_nothing_is_a_call():
    assert parse_tool_calls('{"name": "get_time", "parameters": {}}', None) is None


def test_tool_choice_none_injects_nothing():
    messages = [{"role": "user", "content": "hi"}]
    assert tool_prompt(messages, TOOLS, "none") == messages
    assert tool_prompt(messages, None, None) == messages


@pytest.mark.parametrize(
    ("tools", "choice", "field"),
    [
        (TOOLS, "sometimes", "tool_choice"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name"),
        (None, "required", "tool_choice"),
        ([{"type": "function"}], "auto", "tools[0].function"),
        ([{"type": "retrieval"}], "auto", "tools[0].type"),
        ([{"type": "function", "function": {"name": ""}}], "auto", "tools[0].function.name"),
        ([WEATHER, WEATHER], "auto", "tools[1].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": []}}],
            "auto",
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_tools_are_one_line_value_errors(tools, choice, field):
    with pytest.raises(ValueError) as caught:
        resolve_tool_choice(choice, tools)
    assert str(caught.value).startswith(field + ":") and "\n" not in str(caught.value)


def test_bad_parameters_schema_names_its_tool(llama3):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
    with pytest.raises(ValueError, match=r"^tools\[1\]\.function\.parameters: "):
        tool_call_grammar([WEATHER, bad], "required", llama3)


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ],
)
def test_forced_calls_from_a_random_model(llama3, choice, names):
    assert tool_call_grammar(TOOLS, "auto", llama3) is None
    grammar = tool_call_grammar(TOOLS, choice, llama3)
    model = tiny_model(llama3.vocab_size)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    seen = set()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/serve/test_constraints.py: tiny decode steps
    try:
        for seed in range(8):
            constraint = grammar.start()
            reply = llama3.decode(sample(model, llama3, constraint, seed))
            assert constraint.finished()
            calls = parse_tool_calls(reply, TOOLS)
            assert calls is not None and len(calls) == 1, reply
            name = calls[0]["function"]["name"]
            jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), schemas[name])
            seen.add(name)
    finally:
        torch.set_num_threads(threads)
    assert seen and seen <= names


def test_tool_prompt_keeps_pictures_where_they_stand():
    """A first user turn with pictures among its text parts: the instructions go first, the
    text is stripped as the joined text would be, and the pictures keep their places."""
    picture = ("picture", 0)  # the server's (name, part) of an image_url part
    text = [{"role": "user", "content": "  What is in it? "}]
    pictured = [{"role": "user", "content": [" Look:", picture, " What is in it? "]}]
    plain, out = tool_prompt(text, TOOLS, date=DATE), tool_prompt(pictured, TOOLS, date=DATE)
    assert out[0] == plain[0]  # the system turn
    head, *rest = out[1]["content"]
    assert rest == ["Look:", picture, " What is in it?"]
    assert plain[1]["content"] == head + "What is in it?"
