"""Llama 3.1 tool calls in an agent's reply: built-in tools, code, and custom JSON functions.

A Llama 3.1 model asks for a tool in one of these forms (Meta's prompt-format documentation and
llama-models' `ChatFormat.decode_assistant_message_from_content`, the reference the tests compare
with):

- a built-in search tool: `<|python_tag|>brave_search.call(query="...")<|eom_id|>` (also
  `wolfram_alpha`, `photogen`);
- the code interpreter: `<|python_tag|>` + Python code + `<|eom_id|>`;
- a custom function, as JSON `{"name": ..., "parameters": {...}}` (optionally `"type": "function"`,
  optionally after `<|python_tag|>`), or as `<function=NAME>{...}</function>`, or as a Python-style
  list of keyword calls `[get_weather(city="Paris")]`.

`<|eom_id|>` ends a message whose tool must run before the turn goes on; `<|eot_id|>` ends the
turn. `decode_reply` reads a reply written out with its special tokens (the generated ids decoded
with `skip_special=False`) into its content, stop reason and tool calls. Arguments are read with
`json` and `ast.literal_eval`, never evaluated: a reply is untrusted text.

Where herd differs from the reference, on purpose: a built-in call's arguments are parsed as Python
keyword literals, so a query with escaped quotes (`query="say \\"hi\\""`) or a second keyword
parses; the reference's regular expression stops at the first quote.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from herd.tokenizer.chat import BUILTIN_QUERY_TOOLS, CODE_INTERPRETER

PYTHON_TAG = "<|python_tag|>"
EOT, EOM = "<|eot_id|>", "<|eom_id|>"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"
_BUILTIN_CALL = re.compile(r"\b(?P<name>\w+)\.call\((?P<args>.*)\)\s*$", re.DOTALL)
_FUNCTION_TAG = re.compile(r"<function=(?P<name>[^>]+)>(?P<args>\{.*?\})(</function>)?", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class AgentReply:
    content: str  # "" when the reply is a tool call
    stop_reason: str | None  # "end_of_turn" (<|eot_id|>), "end_of_message" (<|eom_id|>), None
    tool_calls: tuple[ToolCall, ...] = ()
    python_tag: bool = False  # the reply opened with <|python_tag|>

    @property
    def wants_tool(self) -> bool:
        return bool(self.tool_calls)


def decode_reply(text: str) -> AgentReply:
    """The content, stop reason and tool calls of an assistant reply (module docstring)."""
    body = text.strip(" ").removeprefix(ASSISTANT_HEADER)
    python_tag = body.startswith(PYTHON_TAG)
    body = body.removeprefix(PYTHON_TAG)
    stop = None
    if body.endswith(EOT):
        body, stop = body[: -len(EOT)], "end_of_turn"
    elif body.endswith(EOM):
        body, stop = body[: -len(EOM)], "end_of_message"
    calls = _custom_calls(body)
    if calls:
        # a built-in tool written in the custom JSON form: its one argument is the query
        calls = [
            ToolCall(c.name, {"query": next(iter(c.arguments.values()), "")})
            if c.name in BUILTIN_QUERY_TOOLS
            else c
            for c in calls
        ]
    else:
        builtin = _builtin_call(body)
        if builtin is not None:
            calls = [builtin]
        elif python_tag:
            calls = [ToolCall(CODE_INTERPRETER, {"code": body})]
    if calls:
        return AgentReply("", stop, tuple(calls), python_tag)
    return AgentReply(body, stop, (), python_tag)


def _literal_keywords(call: ast.Call) -> dict | None:
    """{name: value} of a call's keyword arguments when all are literals, else None."""
    if call.args:
        return None
    out = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            return None
        try:
            out[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, SyntaxError, TypeError):
            return None
    return out


def _builtin_call(body: str) -> ToolCall | None:
    """`name.call(query="...")` (the last such call in the body, as the model writes it last)."""
    match = _BUILTIN_CALL.search(body.strip())
    if match is None:
        return None
    try:
        tree = ast.parse(f"f({match['args']})", mode="eval")
    except SyntaxError:
        return None
    arguments = _literal_keywords(tree.body) if isinstance(tree.body, ast.Call) else None
    if arguments is None:
        return None
    return ToolCall(match["name"], arguments)


def _custom_calls(body: str) -> list[ToolCall]:
    """Custom function calls: <function=NAME>{...}</function>, a JSON object (or list of them)
    with "name" and "parameters", or a Python-style list of keyword calls."""
    tagged = _FUNCTION_TAG.search(body)
    if tagged is not None:
        try:
            arguments = json.loads(tagged["args"])
        except json.JSONDecodeError:
            return []
        return [ToolCall(tagged["name"], arguments)] if isinstance(arguments, dict) else []
    stripped = body.strip()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return _python_list_calls(stripped)
    calls = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        if item.get("type", "function") != "function":
            return []
        arguments = item.get("parameters", item.get("arguments", {}))
        if not isinstance(arguments, dict):
            return []
        calls.append(ToolCall(item["name"], arguments))
    return calls


def _python_list_calls(body: str) -> list[ToolCall]:
    """[get_weather(city="Paris"), ...]: each element a call of a plain name with keyword
    literals."""
    if not body.startswith("["):
        return []
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError:
        return []
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return []
    calls = []
    for element in tree.body.elts:
        if not isinstance(element, ast.Call) or not isinstance(element.func, ast.Name):
            return []
        arguments = _literal_keywords(element)
        if arguments is None:
            return []
        calls.append(ToolCall(element.func.id, arguments))
    return calls
