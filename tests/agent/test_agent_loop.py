"""herd/agent/agent.py's turn with real parts (a BM25 index, the SQLite memory and turn log, the
sandbox, the tiny keyword guard) around a scripted model: the model's answers are fixed per
module here so the pipeline's wiring can be checked exactly; tests/agent/test_agent_model.py runs
the same turn on a trained model."""

from __future__ import annotations

import json
import re

import pytest

from herd.agent import modules as m
from herd.agent.agent import Agent, AgentConfig
from herd.agent.llm import Completion, PromptTooLong
from herd.agent.memory import MemoryStore
from herd.agent.search import SearchIndex, build_index
from herd.agent.toolbox import Toolbox
from herd.agent.traces import TurnLog
from herd.errors import HerdError


class ScriptedChat:
    """Answers each module's prompt from `answers` (keyed by the prompt's final label, or
    "response"), records every call, and can refuse prompts longer than `limit` characters."""

    tokenizer = None
    max_seq_len = 4096

    def __init__(self, answers: dict, limit: int | None = None):
        self.answers = {k: list(v) if isinstance(v, list) else [v] for k, v in answers.items()}
        self.calls: list[tuple[str, list[dict]]] = []
        self.limit = limit

    def complete(self, messages, max_tokens, temperature=None):
        last = messages[-1]["content"]
        label = re.search(r"\n?([A-Za-z' ]+):$", last)
        key = label.group(1) if label and messages[-1]["role"] == "user" else "response"
        if messages[-1]["role"] == "ipython":
            key = "after_tool"
        if self.limit is not None and sum(len(x["content"]) for x in messages) > self.limit:
            raise PromptTooLong("too long")
        self.calls.append((key, messages))
        queue = self.answers.get(key, ["no"])
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        stop = "end_of_message" if text.startswith("<|python_tag|>") else "end_of_turn"
        return Completion(text, stop, 10, 5, 0.001)


@pytest.fixture
def index(tmp_path):
    docs = tmp_path / "docs.jsonl"
    rows = [
        {"title": "Quellan", "text": "Quellan is the capital of Zorvia. It lies on the river Oss."},
        {"title": "Bread", "text": "Bread is baked from flour, water and yeast."},
    ]
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SearchIndex.load(build_index([str(docs)], tmp_path / "index", show_progress=False))


def test_search_knowledge_reaches_the_reply_and_the_trace_is_stored(tmp_path, index):
    chat = ScriptedChat({
        "Search Decision": "search", "Query": "capital of Zorvia",
        "Interesting Fact": "Quellan is the capital of Zorvia.",
        "response": "It is Quellan.", "Memory": "no persona",
    })  # fmt: skip
    store = MemoryStore(tmp_path / "agent.db", "ann")
    agent = Agent(chat, search=index, memory=store, log=TurnLog(store))
    turn = agent.respond([{"role": "user", "content": "What is the capital of Zorvia?"}])
    assert turn.reply == "It is Quellan." and turn.decisions == {"search": True, "memory": False}
    assert turn.knowledge["search"] == "Quellan is the capital of Zorvia."
    assert turn.knowledge["passages"][0]["title"] == "Quellan"
    # the knowledge module saw the passage; the reply's prompt ends with the knowledge
    knowledge_prompt = dict(chat.calls)["Interesting Fact"][-1]["content"]
    assert "External Knowledge: Quellan. Quellan is the capital of Zorvia." in knowledge_prompt
    response_prompt = dict(chat.calls)["response"]
    assert response_prompt[-1]["content"].endswith(
        "Knowledge for your reply:\nInteresting Fact: Quellan is the capital of Zorvia."
    )
    # a "no persona" note is not stored; the turn is, with every module's trace
    assert len(store) == 0
    record = TurnLog(store).get(turn.id)
    assert record.reply == "It is Quellan." and record.context[-1]["role"] == "user"
    names = [t["module"] for t in record.trace["modules"]]
    assert names == ["search_decision", "search_query", "search_knowledge",
                     "memory_generator:partner", "response", "memory_generator:self"]  # fmt: skip
    assert record.trace["modules"][1]["parsed"] == "capital of Zorvia"


def test_a_note_survives_a_restart_and_is_recalled_once_then_blocked(tmp_path):
    path = tmp_path / "agent.db"
    store = MemoryStore(path, "ann")
    chat = ScriptedChat({"Memory": ["My dog is called Rex.", "no persona"], "response": "Nice!"})
    agent = Agent(chat, memory=store, log=TurnLog(store))
    agent.respond([{"role": "user", "content": "My dog is called Rex."}])
    assert [e.text for e in store.list_entries()] == ["My dog is called Rex."]
    store.close()

    store = MemoryStore(path, "ann")  # a restart: a new session on the same file
    chat = ScriptedChat({
        "Memory Decision": "access memory", "Personal Fact": "Person 1's Persona: My dog is called Rex.",
        "response": "Rex!", "Memory": "no persona",
    })  # fmt: skip
    agent = Agent(chat, memory=store, log=TurnLog(store), config=AgentConfig(block_recent=5))
    assert agent.turn == 1  # the turn count goes on from the earlier session
    turn = agent.respond([{"role": "user", "content": "What is my dog called?"}])
    assert (
        turn.decisions["memory"]
        and turn.knowledge["memory"] == "Person 1's Persona: My dog is called Rex."
    )
    assert dict(chat.calls)["response"][-1]["content"].endswith(
        "Personal Fact: Person 1's Persona: My dog is called Rex."
    )
    entry = store.list_entries()[0]
    assert entry.uses == 1 and entry.last_used_turn == 2
    again = agent.respond([{"role": "user", "content": "Is my dog called Rex?"}])
    assert "memory_decision" not in [t.module for t in again.modules]  # blocked: used 1 turn ago
    store.close()


def test_no_memory_and_no_search_is_the_vanilla_reply(tmp_path):
    chat = ScriptedChat({"response": "Hello!"})
    turn = Agent(chat).respond([{"role": "user", "content": "Hi"}])
    assert turn.reply == "Hello!" and turn.decisions == {"search": False, "memory": False}
    assert [k for k, _ in chat.calls] == ["response"]  # no entity on a first message
    turn = Agent(chat).respond([
        {"role": "user", "content": "I love kites."}, {"role": "assistant", "content": "Me too."},
        {"role": "user", "content": "Tell me more."},
    ])  # fmt: skip
    assert [t.module for t in turn.modules] == ["contextual_knowledge", "response"]
    with pytest.raises(HerdError, match="last message must be the user's"):
        Agent(chat).respond([{"role": "assistant", "content": "Hi"}])


def test_the_code_interpreter_runs_in_the_sandbox_and_the_model_goes_on(tmp_path):
    chat = ScriptedChat({"response": "<|python_tag|>print(6 * 7)", "after_tool": "It is 42."})
    agent = Agent(chat, toolbox=Toolbox(code=True))
    turn = agent.respond([{"role": "user", "content": "What is 6 * 7?"}])
    assert turn.reply == "It is 42."
    assert turn.tools[0]["name"] == "code_interpreter" and turn.tools[0]["output"] == "42"
    last_prompt = chat.calls[-1][1]
    assert last_prompt[0]["content"].startswith("Environment: ipython\nCutting Knowledge Date:")
    assert last_prompt[-2]["tool_calls"][0]["function"] == {
        "name": "code_interpreter", "arguments": {"code": "print(6 * 7)"},
    }  # fmt: skip
    assert last_prompt[-1] == {"role": "ipython", "content": "42"}


def test_the_tool_loop_stops_at_its_step_limit(tmp_path):
    chat = ScriptedChat(
        {"response": "<|python_tag|>print(1)", "after_tool": "<|python_tag|>print(1)"}
    )
    agent = Agent(chat, toolbox=Toolbox(code=True), config=AgentConfig(max_tool_steps=2))
    turn = agent.respond([{"role": "user", "content": "loop"}])
    assert len(turn.tools) == 2 and len([k for k, _ in chat.calls]) == 3


def test_brave_search_is_answered_by_the_index(index):
    chat = ScriptedChat({
        "Search Decision": "do not search",
        "response": '<|python_tag|>brave_search.call(query="Zorvia capital")',
        "after_tool": "Quellan.",
    })  # fmt: skip
    turn = Agent(chat, search=index, toolbox=Toolbox(index, code=False)).respond(
        [{"role": "user", "content": "Capital of Zorvia?"}]
    )
    results = json.loads(turn.tools[0]["output"])
    assert results[0]["title"] == "Quellan" and "capital of Zorvia" in results[0]["snippet"]
    assert "Tools: brave_search" in chat.calls[-1][1][0]["content"]
    assert turn.reply == "Quellan."


def test_a_module_prompt_too_long_is_retried_with_fewer_turns():
    chat = ScriptedChat(
        {"Search Decision": "search", "Query": "kites", "response": "ok"}, limit=900
    )
    long = [{"role": r, "content": "kites are fun to fly " * 3}
            for _ in range(12) for r in ("user", "assistant")][:-1]  # fmt: skip

    class NoHits:
        def search(self, query, k):
            return []

    turn = Agent(chat, search=NoHits(), config=AgentConfig(entity=False)).respond(long)
    query = next(t for t in turn.modules if t.module == "search_query")
    assert query.parsed == "kites"
    assert len(query.messages[-1]["content"].splitlines()) < len(long)  # fewer turns shown


# --- the guard (the tiny keyword guard of tests/guard_model.py: "bomb" and "poison" are unsafe) ---


@pytest.fixture(scope="module")
def moderator(tiny_guard):
    from herd.guard.moderator import Moderator
    from herd.guard.policy import resolve_policy
    from tests.guard_model import CATEGORIES

    return Moderator.load(tiny_guard, resolve_policy(None, CATEGORIES), device="cpu")


def test_an_unsafe_message_is_refused_before_any_module_runs(tmp_path, moderator):
    store = MemoryStore(tmp_path / "a.db", "ann")
    chat = ScriptedChat({"response": "never"})
    turn = Agent(chat, memory=store, guard=moderator, log=TurnLog(store)).respond(
        [{"role": "user", "content": "How do I make a bomb?"}]
    )
    assert turn.reply == moderator.refusal and turn.flagged == "input" and chat.calls == []
    assert TurnLog(store).get(turn.id).flagged == "input" and len(store) == 0


def test_an_unsafe_reply_and_unsafe_code_are_replaced(moderator):
    chat = ScriptedChat({"response": "Here is the plan for the bomb."})
    turn = Agent(chat, guard=moderator).respond([{"role": "user", "content": "Make a cake."}])
    assert turn.reply == moderator.refusal and turn.flagged == "output"
    code = ScriptedChat({"response": "<|python_tag|>print('how to build a bomb')"})
    turn = Agent(code, guard=moderator, toolbox=Toolbox(code=True)).respond(
        [{"role": "user", "content": "Write some code for my garden."}]
    )
    assert turn.flagged == "tool" and turn.tools == [
        {"name": "code_interpreter", "arguments": {"code": "print('how to build a bomb')"},
         "output": None, "refused": True}
    ]  # fmt: skip
    safe = ScriptedChat({"response": "<|python_tag|>print('cake')", "after_tool": "cake"})
    turn = Agent(safe, guard=moderator, toolbox=Toolbox(code=True)).respond(
        [{"role": "user", "content": "Print cake."}]
    )
    assert turn.flagged is None and turn.tools[0]["output"] == "cake" and turn.reply == "cake"


def test_module_labels_the_script_keys_on_are_the_modules_own():
    # the scripted model keys on the label each module's prompt ends with
    context = [{"role": "user", "content": "hi"}]
    assert m.build_search_decision_messages(context)[-1]["content"].endswith("Search Decision:")
    assert m.build_search_query_messages(context)[-1]["content"].endswith("Query:")
    assert m.build_memory_generator_messages(context)[-1]["content"].endswith("Memory:")
