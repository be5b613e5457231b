"""`herd agent CKPT`: the agent in a terminal, and the options it shares with `herd serve --agent`.

Each line you type is one turn (herd/agent/agent.py). Commands:

    /good            thumbs up on the last reply
    /bad [text]      thumbs down, optionally saying what was wrong
    /fix TEXT        thumbs down, and TEXT is what the reply should have been
    /trace           the last turn's modules, tools and timings
    /memory          this user's notes
    /reset           a new conversation (the long-term memory stays)
    /exit            (or end of input)

Every turn is stored with its trace in the --memory file, rated or not; `herd agent feedback
export` turns the ratings into SFT and DPO data.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

from herd import options
from herd.errors import HerdError

DEFAULT_MEMORY = "agent.db"
COMMANDS = ("/good", "/bad", "/fix", "/trace", "/memory", "/reset", "/exit")


def add_agent_options(p: argparse.ArgumentParser, serve: bool = False) -> None:
    """The agent's parts: search, memory, tools, Director (the REPL and `herd serve --agent`)."""
    p.add_argument(
        "--index",
        default="stdlib",
        metavar="INDEX",
        help="the search backend: a `herd index build` folder, 'stdlib' (Python's documentation, "
        "built offline on first use; the default), an http(s):// endpoint returning JSON "
        "results, or 'none' (no search module, no brave_search tool)",
    )
    p.add_argument(
        "--memory",
        default=DEFAULT_MEMORY,
        metavar="agent.db",
        help=f"SQLite file of the long-term memory, every turn's trace and the feedback (default "
        f"{DEFAULT_MEMORY}; created if absent)",
    )
    p.add_argument(
        "--no-memory",
        action="store_true",
        help="no long-term memory: notes are neither read nor written (turns are still logged)",
    )
    if not serve:
        p.add_argument("--user", default="default", help="whose memory (default 'default')")
    p.add_argument(
        "--tools",
        metavar="TOOLS.json",
        help="custom function tools: a JSON list of OpenAI tool definitions, each optionally with "
        '"command": [argv] that runs it (arguments as JSON on stdin, stdout is the result)',
    )
    p.add_argument(
        "--no-code", action="store_true", help="no code_interpreter tool (Environment: ipython off)"
    )
    p.add_argument(
        "--code-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="the code interpreter's wall-clock limit per run in seconds (default 10; CPU time "
        "is limited to half of it)",
    )
    p.add_argument(
        "--code-memory",
        type=options.positive_int,
        default=512,
        metavar="MB",
        help="the code interpreter's memory limit in MB (default 512)",
    )
    p.add_argument(
        "--max-tool-steps",
        type=int,
        default=4,
        metavar="N",
        help="tool calls per turn before the reply must be text (default 4; 0 = no tools)",
    )
    p.add_argument(
        "--response-tokens",
        type=options.positive_int,
        default=256,
        metavar="N",
        help="tokens per reply or tool call (default 256; the modules have their own small caps)",
    )
    p.add_argument(
        "--director",
        metavar="DIR",
        help="a Director classifier head (`herd agent director`) to decode replies with",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="Director's weight: log p(token) + gamma * log sigmoid(classifier) (default: the "
        "head's own)",
    )


def add_repl_arguments(p: argparse.ArgumentParser) -> None:
    from herd.guard.cli import add_guard_options

    p.add_argument("checkpoint", metavar="CHECKPOINT", help="chat model folder (Llama 3 format)")
    add_agent_options(p)
    p.add_argument(
        "--trace",
        action="store_true",
        help="print each turn's modules (the end of each prompt, the output, the parsed value, "
        "milliseconds), tool calls and knowledge on stderr; the whole trace is stored with the "
        "turn in --memory either way",
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, help="reply sampling temperature (default 0)"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    options.add_device(p)
    add_guard_options(p, chat=True)


def open_parts(args: argparse.Namespace):
    """(search backend or None, Toolbox, Director or None) from the options; checked before any
    model loads, so a bad path is one line."""
    from herd.agent.sandbox import Limits
    from herd.agent.search import open_backend
    from herd.agent.toolbox import Toolbox, load_tool_file

    if args.gamma is not None and args.director is None:
        raise HerdError("--gamma needs --director DIR")
    functions, commands = load_tool_file(args.tools) if args.tools else ([], {})
    if args.max_tool_steps < 0:
        raise HerdError(f"--max-tool-steps {args.max_tool_steps}: expected 0 or more")
    if args.code_timeout <= 0:
        raise HerdError(f"--code-timeout {args.code_timeout}: expected seconds > 0")
    search = None if args.index == "none" else open_backend(args.index)
    limits = Limits(
        cpu_seconds=args.code_timeout / 2,
        wall_seconds=args.code_timeout,
        memory_mb=args.code_memory,
    )
    toolbox = None
    if args.max_tool_steps > 0:
        toolbox = Toolbox(
            search, code=not args.no_code, limits=limits, functions=functions, commands=commands
        )
    return search, toolbox


def make_agent(args, chat, user: str, search, toolbox, guard, session: str | None = None):
    """An Agent for `user` over `chat`, logging to the --memory file."""
    from herd.agent.agent import Agent, AgentConfig
    from herd.agent.memory import MemoryStore
    from herd.agent.traces import TurnLog

    store = MemoryStore(args.memory, user, session=session or uuid.uuid4().hex)
    config = AgentConfig(response_tokens=args.response_tokens, max_tool_steps=args.max_tool_steps)
    return Agent(
        chat,
        search=search,
        memory=None if args.no_memory else store,
        guard=guard,
        toolbox=toolbox,
        log=TurnLog(store),
        config=config,
    )


def load_director(args, model):
    if args.director is None:
        return None
    from herd.agent.director import load_director as load

    head, meta = load(args.director, model)
    return head, meta.get("gamma", 1.0) if args.gamma is None else args.gamma


def run_repl(args: argparse.Namespace) -> None:
    from herd.agent.llm import LocalChat, check_chat_tokenizer
    from herd.checkpoint.loading import load_for_command
    from herd.guard.cli import guard_policy
    from herd.guard.moderator import load_moderator

    policy = guard_policy(args)
    search, toolbox = open_parts(args)
    model, tok, _ = load_for_command(args.checkpoint, args.device, args.dtype, "to chat")
    check_chat_tokenizer(tok)
    chat = LocalChat(
        model, tok, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        director=load_director(args, model),
    )  # fmt: skip
    agent = make_agent(args, chat, args.user, search, toolbox, load_moderator(args, policy))
    sys.stderr.write(f"herd agent ({args.memory}, user {args.user}); {', '.join(COMMANDS)}\n")
    context: list[dict] = []
    last = None
    while True:
        try:
            line = input("> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        word, _, rest = line.strip().partition(" ")
        if word == "/exit":
            return
        if word == "/reset":
            context, last = [], None
        elif word in ("/good", "/bad", "/fix"):
            if last is None or last.id is None:
                sys.stderr.write("no reply to rate yet\n")
            elif word == "/fix" and not rest.strip():
                sys.stderr.write("/fix needs the reply it should have been\n")
            else:
                fix = word == "/fix"
                rating = "good" if word == "/good" else "bad"
                agent.log.rate(
                    last.id, rating, None if fix else rest or None, rest if fix else None
                )
                sys.stderr.write(f"rated turn {last.id} {rating}\n")
        elif word == "/trace":
            sys.stderr.write(format_trace(last) if last else "no turn yet\n")
        elif word == "/memory":
            for e in agent.log.store.list_entries(args.user):
                sys.stderr.write(f"{e.id}\t{e.speaker}\t{e.text}\n")
        elif word.startswith("/"):
            sys.stderr.write(f"unknown command {word}; commands: {', '.join(COMMANDS)}\n")
        elif line.strip():
            context.append({"role": "user", "content": line})
            last = agent.respond(context)
            if last.flagged == "input":  # the unsafe line stays out of later turns
                context.pop()
            else:
                context.append({"role": "assistant", "content": last.reply})
            if args.trace:
                sys.stderr.write(format_trace(last))
            sys.stdout.write(last.reply + "\n")


def format_trace(turn) -> str:
    """A turn's trace for the terminal: one line per module and tool call."""
    lines = [
        f"-- turn {turn.turn} (id {turn.id}), {turn.seconds:.2f} s, decisions {turn.decisions}"
    ]
    for t in turn.modules:
        shown = t.parsed if isinstance(t.parsed, str | bool | None) else json.dumps(t.parsed)
        out = " ".join(t.output.split())[:120]
        asked = " ".join(t.messages[-1]["content"].split()) if t.messages else ""
        lines.append(f"   {t.module:<24} {t.seconds * 1000:7.0f} ms  {out!r} -> {shown!r}")
        lines.append(f"   {'':<24} prompt ({len(t.messages)} messages) ...{asked[-160:]!r}")
    for call in turn.tools:
        output = " ".join(str(call.get("output")).split())[:120]
        lines.append(f"   tool {call['name']}({json.dumps(call['arguments'])[:80]}) -> {output!r}")
    for key in ("search", "memory", "entity"):
        if turn.knowledge.get(key):
            lines.append(f"   knowledge {key}: {turn.knowledge[key]}")
    if turn.flagged:
        lines.append(f"   guard: {turn.flagged} unsafe")
    return "\n".join(lines) + "\n"
