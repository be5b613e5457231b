"""Llama 3.1 JSON tool calling behind OpenAI's `tools` / `tool_choice` fields.

Prompt: Meta's Llama 3.1 Instruct chat template (the one shipped with the model, whose text this
follows character for character; tests compare against it): with custom tools the system message
opens with "Environment: ipython", the knowledge cutoff and today's date, and the first user message
is prefixed with the instruction to answer with {"name": function name, "parameters": ...} and each
tool definition as indented JSON. Earlier turns pass through unchanged: herd/tokenizer/chat.py
already writes assistant `tool_calls` as Llama 3.1 JSON calls and `tool` results as `ipython` turns.

Reply: a Llama 3.1 model calls custom tools with a JSON object {"name": ..., "parameters": {...}}
(optionally "type": "function", optionally after <|python_tag|>); several calls are written one after
another (separated by ";" or new lines) or as a JSON list. `parse_tool_calls` turns such a reply into
OpenAI `tool_calls`, and anything else (prose, a malformed call, an unknown function) into None, so
the reply is returned as plain content.

tool_choice "required" or a named function is enforced, not requested: `tool_call_grammar` builds a
JSON Schema grammar (herd/serve/constraints.py) whose only outputs are a call of an allowed function
with arguments valid against its parameters schema.
"""

from __future__ import annotations

import datetime
import json
import uuid

from herd.serve.constraints import Grammar, json_schema_grammar
from herd.tokenizer.base import Tokenizer

KNOWLEDGE_CUTOFF = "December 2023"
# Meta's wording, run-ons and all ("...its value}.Do not use variables."): the model was tuned on it.
TOOL_INSTRUCTIONS = (
    "Given the following functions, please respond with a JSON for a function call "
    "with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and '
    "its value}.Do not use variables.\n\n"
)
PYTHON_TAG = "<|python_tag|>"
_END_MARKERS = ("<|eom_id|>", "<|eot_id|>")


def functions_of(tools: list[dict] | None) -> dict[str, dict]:
    """name -> function definition of OpenAI `tools`; ValueError naming the bad field."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise ValueError("tools: expected a list")
    out: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ValueError(f'tools[{i}].type: expected "function"')
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"tools[{i}].function: expected an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tools[{i}].function.name: expected a non-empty string")
        if name in out:
            raise ValueError(f"tools[{i}].function.name: {name!r} is defined twice")
        if not isinstance(fn.get("parameters", {}), dict):
            raise ValueError(f"tools[{i}].function.parameters: expected a JSON Schema object")
        out[name] = fn
    return out


def resolve_tool_choice(tool_choice, tools: list[dict] | None) -> str | None:
    """OpenAI `tool_choice` as "none", "auto", "required" or a function's name; None (no tools).

    Absent, it is "auto" when tools are given (OpenAI's default). ValueError naming the field.
    """
    functions = functions_of(tools)
    if not functions:
        if tool_choice in (None, "none", "auto"):
            return None
        raise ValueError("tool_choice: requires tools")
    if tool_choice is None:
        return "auto"
    if tool_choice in ("none", "auto", "required"):
        return tool_choice
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in functions:
            raise ValueError(f"tool_choice.function.name: {name!r} is not one of the tools")
        return name
    raise ValueError(
        'tool_choice: expected "none", "auto", "required" or '
        '{"type": "function", "function": {"name": ...}}'
    )


def tool_prompt(
    messages: list[dict],
    tools: list[dict] | None,
    tool_choice="auto",
    date: datetime.date | None = None,
) -> list[dict]:
    """`messages` with the Llama 3.1 custom-tool prompt injected (unchanged when no tools are in
    play, or tool_choice is "none"). `date` (default today) fills the "Today Date:" line."""
    choice = resolve_tool_choice(tool_choice, tools)
    # OpenAI clients send content null beside tool_calls; herd's chat formats want a string.
    messages = [{**m, "content": m.get("content") or ""} for m in messages]
    if choice in (None, "none"):
        return messages
    system = ""
    if messages and messages[0].get("role") == "system":
        system = messages.pop(0)["content"].strip()
    if not messages or messages[0].get("role") != "user":
        raise ValueError("messages: tools need a user message after the system message")
    day = (date or datetime.date.today()).strftime("%d %b %Y")
    header = (
        f"Environment: ipython\nCutting Knowledge Date: {KNOWLEDGE_CUTOFF}\nToday Date: {day}\n\n"
    )
    definitions = "".join(json.dumps(t, indent=4, ensure_ascii=False) + "\n\n" for t in tools)
    first = messages[0]
    content = first["content"]
    if isinstance(content, list):  # pictures among its text (herd.tokenizer.chat's pieces)
        user = [TOOL_INSTRUCTIONS + definitions, *_strip_pieces(content)]
    else:
        user = TOOL_INSTRUCTIONS + definitions + content.strip()
    return [
        {"role": "system", "content": header + system},
        {**first, "content": user},
        *messages[1:],
    ]


def _strip_pieces(pieces: list) -> list:
    """Pictured content stripped as its joined text would be: the first text's leading and the
    last text's trailing whitespace (the pictures keep their places)."""
    out = list(pieces)
    texts = [i for i, p in enumerate(out) if isinstance(p, str)]
    if texts:
        out[texts[0]] = out[texts[0]].lstrip()
        out[texts[-1]] = out[texts[-1]].rstrip()
    return out


def parse_tool_calls(text: str, tools: list[dict] | None) -> list[dict] | None:
    """OpenAI `tool_calls` of a Llama 3.1 JSON tool-call reply, or None when `text` is not one
    (prose, malformed JSON, an unknown function, arguments that are not an object)."""
    functions = functions_of(tools)
    if not functions or not isinstance(text, str):
        return None
    body = text.strip()
    body = body.removeprefix(PYTHON_TAG).strip()
    for marker in _END_MARKERS:
        body = body.removesuffix(marker).rstrip()
    decoder = json.JSONDecoder()
    calls = []
    at = 0
    while at < len(body):
        try:
            value, at = decoder.raw_decode(body, at)
        except json.JSONDecodeError:
            return None
        for call in value if isinstance(value, list) else [value]:
            parsed = _call(call, functions)
            if parsed is None:
                return None
            calls.append(parsed)
        while at < len(body) and (body[at].isspace() or body[at] == ";"):
            at += 1
    return calls or None


def _call(value, functions: dict[str, dict]) -> dict | None:
    if not isinstance(value, dict) or value.get("type", "function") != "function":
        return None
    name = value.get("name")
    arguments = value.get("parameters", value.get("arguments", {}))
    if name not in functions or not isinstance(arguments, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def tool_call_schema(tools: list[dict], tool_choice) -> dict | None:
    """The JSON Schema of a forced call ({"name": const, "parameters": the function's schema}),
    or None when tool_choice does not force one ("auto", "none", no tools)."""
    choice = resolve_tool_choice(tool_choice, tools)
    if choice in (None, "none", "auto"):
        return None
    functions = functions_of(tools)
    names = list(functions) if choice == "required" else [choice]
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": name},
                "parameters": functions[name].get("parameters") or {"type": "object"},
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for name in names
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(tools: list[dict], tool_choice, tok: Tokenizer) -> Grammar | None:
    """A Grammar that allows only a call of the chosen function(s) (tool_choice "required" or a
    named function), or None when the choice is free. Each function's parameters schema is
    checked on its own first, so an error names the tool it comes from."""
    schema = tool_call_schema(tools, tool_choice)
    if schema is None:
        return None
    for i, tool in enumerate(tools):
        if "parameters" in tool["function"]:
            json_schema_grammar(
                tool["function"]["parameters"], tok, f"tools[{i}].function.parameters"
            )
    return json_schema_grammar(schema, tok, "tools")
