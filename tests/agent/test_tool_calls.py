"""herd/agent/tool_calls.py against llama-models' reference decoder of assistant replies
(`ChatFormat.decode_assistant_message_from_content`), on every Llama 3.1 tool-call format, and
round trips through herd's own chat format."""

from __future__ import annotations

import pytest

from herd.agent.tool_calls import ToolCall, decode_reply
from herd.tokenizer import load_tokenizer
from tests import references

REPLIES = [
    "The capital of France is Paris.<|eot_id|>",
    '<|python_tag|>brave_search.call(query="weather in Menlo Park")<|eom_id|>',
    '<|python_tag|>wolfram_alpha.call(query="integrate x^2")<|eom_id|>',
    "<|python_tag|>import math\nprint(math.sqrt(2))<|eom_id|>",
    '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}<|eot_id|>',
    '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Oslo"}}'
    "<|eom_id|>",
    '<function=get_time>{"zone": "UTC"}</function><|eot_id|>',
    '[get_weather(city="Paris", days=2)]<|eot_id|>',
    '{"name": "brave_search", "parameters": {"q": "llamas"}}<|eot_id|>',
    "no end marker, still talking",
    '{"not": "a call"}<|eot_id|>',
]


@pytest.fixture(scope="module")
def meta():
    from llama_models.llama3 import chat_format  # the reference: a dev dependency
    from llama_models.llama3.tokenizer import Tokenizer

    return chat_format.ChatFormat(Tokenizer(references.llama3_tokenizer()))


def _reference(meta, text):
    from llama_models.datatypes import StopReason

    message = meta.decode_assistant_message_from_content(text, StopReason.out_of_tokens)
    stop = {"end_of_turn": "end_of_turn", "end_of_message": "end_of_message"}.get(
        message.stop_reason.value
    )
    calls = [
        (str(getattr(c.tool_name, "value", c.tool_name)), c.arguments) for c in message.tool_calls
    ]
    return message.content, stop, calls


@pytest.mark.parametrize("text", REPLIES)
def test_matches_meta_decoder(meta, text):
    ours = decode_reply(text)
    content, stop, calls = _reference(meta, text)
    assert ours.content == content and ours.stop_reason == stop
    assert [(c.name, c.arguments) for c in ours.tool_calls] == calls


def test_where_herd_reads_more_than_the_reference(meta):
    # escaped quotes and a second keyword: the reference's regular expression gives up
    text = '<|python_tag|>brave_search.call(query="say \\"hi\\"", count=3)<|eom_id|>'
    assert decode_reply(text).tool_calls == (
        ToolCall("brave_search", {"query": 'say "hi"', "count": 3}),
    )
    # the reference keeps only the first call of a list
    both = decode_reply('[f(a=1), g(b="x")]<|eot_id|>')
    assert [c.name for c in both.tool_calls] == ["f", "g"]
    # arguments are literals, never evaluated
    unsafe = decode_reply(
        '<|python_tag|>brave_search.call(query=__import__("os").getcwd())<|eom_id|>'
    )
    assert unsafe.tool_calls == (
        ToolCall(
            "code_interpreter", {"code": 'brave_search.call(query=__import__("os").getcwd())'}
        ),
    )


def test_round_trip_through_herd_chat_format():
    tok = load_tokenizer(references.llama3_tokenizer())
    calls = [
        {"function": {"name": "brave_search", "arguments": {"query": "bb3 memory"}}},
        {"function": {"name": "code_interpreter", "arguments": {"code": "print(1 + 1)"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Lima"}}},
    ]
    for call in calls:
        dialog = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ]
        ids, mask = tok.encode_dialog(dialog, add_generation_prompt=False)
        written = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
        reply = decode_reply(written)
        fn = call["function"]
        assert reply.tool_calls == (ToolCall(fn["name"], fn["arguments"]),)
        builtin = fn["name"] in ("brave_search", "code_interpreter")
        assert reply.stop_reason == ("end_of_message" if builtin else "end_of_turn")
