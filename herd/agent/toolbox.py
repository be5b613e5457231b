"""The agent's tools, as Llama 3.1 declares and calls them: `brave_search` (answered by the agent's
search backend: a local BM25 index, the stdlib documentation or an HTTP endpoint), the
`code_interpreter` (herd.agent.sandbox) and custom JSON functions declared in a file.

Declaration follows Meta's Llama 3.1 chat template: the system message opens with
`Environment: ipython` (which with no other tool listed enables the code interpreter), then
`Tools: brave_search` for the built-in search tool, the knowledge cut-off and today's date; custom
functions go into the first user message as JSON definitions after Meta's instruction
(herd.serve.tools.tool_prompt, the same text `herd serve` writes for OpenAI `tools`).

A tool file is a JSON list of OpenAI tool definitions (`{"type": "function", "function": {"name",
"description", "parameters"}}`). An entry may add `"command": ["program", "arg", ...]`: the agent
runs it with the call's arguments as JSON on stdin and reads its stdout as the result (a timeout,
no shell). A function without a command is declared but not run here: the REPL tells the model it
is unavailable, and `herd serve --agent` hands the call back to the client, as OpenAI's API does.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from herd.agent.sandbox import Limits, run_python
from herd.agent.tool_calls import ToolCall
from herd.errors import HerdError
from herd.tokenizer.chat import CODE_INTERPRETER

SEARCH_TOOL = "brave_search"
SEARCH_RESULTS = 3  # what Meta's reference agent shows of a search (the top results)
SNIPPET_WORDS = 60
COMMAND_TIMEOUT = 30.0


@dataclass
class ToolResult:
    name: str
    arguments: dict
    output: str  # what the model reads in the ipython role
    seconds: float
    details: dict = field(default_factory=dict)  # for the trace (sandbox isolation, exit code)


def load_tool_file(path: str | Path) -> tuple[list[dict], dict[str, list[str]]]:
    """The OpenAI tool definitions of a tool file and the commands of those that have one."""
    from herd.serve.tools import functions_of

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HerdError(f"{path}: no such tool file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise HerdError(f"{path}: expected a JSON list of tool definitions")
    commands = {}
    tools = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise HerdError(f"{path}: entry {i} is not an object")
        entry = dict(entry)
        command = entry.pop("command", None)
        tools.append(entry)
        try:
            name = next(iter(functions_of([entry])))
        except ValueError as e:
            raise HerdError(f"{path}: {str(e).replace('tools[0]', f'[{i}]')}") from None
        if name in (SEARCH_TOOL, CODE_INTERPRETER):
            raise HerdError(f"{path}: [{i}] redefines the built-in tool {name!r}")
        if command is not None:
            if not (
                isinstance(command, list) and command and all(isinstance(c, str) for c in command)
            ):
                raise HerdError(f"{path}: [{i}].command: expected a list of strings (argv)")
            commands[name] = command
    try:
        functions_of(tools)  # names defined twice
    except ValueError as e:
        raise HerdError(f"{path}: {e}") from None
    return tools, commands


class Toolbox:
    """What the agent may call, and how each call runs."""

    def __init__(
        self,
        search=None,
        *,
        code: bool = True,
        limits: Limits | None = None,
        functions: list[dict] | None = None,
        commands: dict[str, list[str]] | None = None,
    ) -> None:
        self.search = search
        self.code = code
        self.limits = limits or Limits()
        self.functions = list(functions or [])
        self.commands = dict(commands or {})

    @property
    def builtins(self) -> list[str]:
        return ([SEARCH_TOOL] if self.search is not None else []) + (
            [CODE_INTERPRETER] if self.code else []
        )

    def names(self) -> set[str]:
        return set(self.builtins) | {t["function"]["name"] for t in self.functions}

    def prompt(self, messages: list[dict], date=None) -> list[dict]:
        """`messages` (a system message first, then the dialogue) with the tools declared, as
        Meta's Llama 3.1 chat template writes them: "Environment: ipython", then "Tools: ..." for
        the built-ins other than the code interpreter, the cut-off and the date, then the system
        prompt; custom functions go into the first user message."""
        import datetime

        from herd.serve.tools import KNOWLEDGE_CUTOFF, tool_prompt

        messages = [dict(x) for x in messages]
        system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else ""
        if not (self.builtins or self.functions):
            return [{"role": "system", "content": system}, *messages]
        if self.functions:  # the instruction and definitions into the first user message
            messages = tool_prompt(messages, self.functions, "auto", date)[1:]
        day = (date or datetime.date.today()).strftime("%d %b %Y")
        header = "Environment: ipython\n"
        if self.search is not None:
            header += f"Tools: {SEARCH_TOOL}\n\n"
        header += f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}\nToday Date: {day}\n\n"
        return [{"role": "system", "content": header + system}, *messages]

    def run(self, call: ToolCall) -> ToolResult:
        began = time.perf_counter()
        details: dict = {}
        if call.name == CODE_INTERPRETER and self.code:
            code = call.arguments.get("code", "")
            result = run_python(code if isinstance(code, str) else str(code), self.limits)
            output = result.to_tool_text()
            details = {
                "exit_code": result.exit_code,
                "killed": result.killed_reason,
                "isolation": result.network_isolation,
            }
        elif call.name == SEARCH_TOOL and self.search is not None:
            output = self._search(str(call.arguments.get("query", "")))
        elif call.name in self.commands:
            output, details = self._command(call)
        elif call.name in self.names():
            output = f"The tool {call.name} is not available here."
        else:
            output = f"There is no tool named {call.name}."
        return ToolResult(
            call.name, dict(call.arguments), output, time.perf_counter() - began, details
        )

    def _search(self, query: str) -> str:
        if not query.strip():
            return "[]"
        try:
            hits = self.search.search(query, SEARCH_RESULTS)
        except HerdError as e:  # an HTTP backend that is down: the model is told, the turn goes on
            return f"search failed: {e}"
        out = []
        for h in hits:
            words = " ".join(h.get("text", "").split()[:SNIPPET_WORDS])
            out.append(
                {
                    "title": h.get("title") or "",
                    "url": h.get("url") or h.get("source") or "",
                    "snippet": words,
                }
            )
        return json.dumps(out, ensure_ascii=False)

    def _command(self, call: ToolCall) -> tuple[str, dict]:
        argv = self.commands[call.name]
        try:
            done = subprocess.run(
                argv,
                input=json.dumps(call.arguments),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            return f"The tool {call.name} failed: {argv[0]} was not found.", {"exit_code": None}
        except subprocess.TimeoutExpired:
            return f"The tool {call.name} timed out after {COMMAND_TIMEOUT:g} s.", {
                "exit_code": None
            }
        output = done.stdout.strip() or done.stderr.strip()[-2000:] or "[no output]"
        return output[:16000], {"exit_code": done.returncode}
