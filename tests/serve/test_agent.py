"""`herd serve --agent`: the agent as a second model name over the server's own engine, through
the `openai` client; ratings through /v1/agent/feedback; and the code interpreter round trip on
the tiny agent model (tests/agent_model.py)."""

from __future__ import annotations

import argparse

import httpx
import openai
import pytest

from herd.agent.memory import MemoryStore
from herd.agent.toolbox import Toolbox
from herd.agent.traces import TurnLog
from herd.serve.agent import AgentService
from tests.serve.conftest import KEY, Running


def agent_args(tmp_path, **kw) -> argparse.Namespace:
    values = {"memory": str(tmp_path / "agent.db"), "no_memory": False, "response_tokens": 16,
              "max_tool_steps": 4}  # fmt: skip
    return argparse.Namespace(**{**values, **kw})


@pytest.fixture(scope="module")
def served(loaded, tmp_path_factory):
    srv = Running(loaded)
    args = agent_args(tmp_path_factory.mktemp("agent-serve"))
    srv.state.agent = AgentService(args, "tiny-agent", None, Toolbox(code=True), None)
    yield srv
    srv.stop()


def test_the_agent_is_a_second_model_with_its_turn_and_feedback(served):
    assert [m.id for m in served.client.models.list().data] == ["tiny", "tiny-agent"]
    ask = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "hello there"}]
    reply = served.client.chat.completions.create(model="tiny-agent", messages=ask, user="ann")
    extra = reply.model_extra["agent"]
    assert reply.model == "tiny-agent" and reply.choices[0].finish_reason == "stop"
    assert extra["decisions"] == {"search": False, "memory": False} and extra["turn"] >= 1
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    with MemoryStore(served.state.agent.args.memory, "ann") as store:
        record = TurnLog(store).get(extra["turn"])
        assert record.user == "ann" and record.reply == reply.choices[0].message.content
        assert record.context == ask[1:]  # the client's system message is not the agent's
    url = served.url + "/v1/agent/feedback"
    headers = {"Authorization": f"Bearer {KEY}"}
    ok = httpx.post(url, json={"turn": extra["turn"], "rating": "bad", "correction": "Hi!"},
                    headers=headers)  # fmt: skip
    assert ok.status_code == 200 and ok.json() == {
        "turn": extra["turn"],
        "rating": "bad",
        "stored": True,
    }
    with MemoryStore(served.state.agent.args.memory, "ann") as store:
        assert TurnLog(store).get(extra["turn"]).correction == "Hi!"
    gone = httpx.post(url, json={"turn": 9999, "rating": "good"}, headers=headers)
    assert (
        gone.status_code == 404 and "no agent turn with id 9999" in gone.json()["error"]["message"]
    )
    bad = httpx.post(url, json={"turn": 1, "rating": "meh"}, headers=headers)
    assert bad.status_code == 400


def test_max_tokens_limits_the_reply(served, loaded):
    _, tok = loaded
    ask = [{"role": "user", "content": "hello there"}]
    replies = {}
    for limit in (None, 1):
        reply = served.client.chat.completions.create(
            model="tiny-agent", messages=ask, user="cap", max_tokens=limit
        )
        with MemoryStore(served.state.agent.args.memory, "cap") as store:
            trace = TurnLog(store).get(reply.model_extra["agent"]["turn"]).trace
        replies[limit] = [t["output"] for t in trace["modules"] if t["module"] == "response"][-1]
    assert len(tok.encode(replies[1])) <= 1 < len(tok.encode(replies[None])), replies


def test_streaming_sends_the_finished_reply_and_plain_requests_still_work(served):
    ask = [{"role": "user", "content": "hello there"}]
    chunks = list(
        served.client.chat.completions.create(model="tiny-agent", messages=ask, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["agent"]["turn"]
    whole = served.client.chat.completions.create(model="tiny-agent", messages=ask)
    assert text == whole.choices[0].message.content  # greedy modules, greedy reply
    plain = served.client.chat.completions.create(model="tiny", messages=ask, max_tokens=4)
    assert plain.model == "tiny" and plain.choices[0].message.content is not None


def test_client_tools_and_bad_requests_are_refused(served):
    ask = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="uses its own tools"):
        served.client.chat.completions.create(model="tiny-agent", messages=ask, tools=[tool])
    with pytest.raises(openai.BadRequestError, match="answers a last user message"):
        served.client.chat.completions.create(
            model="tiny-agent", messages=[{"role": "assistant", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError, match="'tiny', 'tiny-agent'"):
        served.client.chat.completions.create(model="other", messages=ask)


def test_bad_agent_options_fail_before_the_server_starts(checkpoint, tmp_path):
    from tests.e2e.cli_runner import herd_cli_inprocess

    for extra, message in (
        (["--director", str(tmp_path)], "--director: Director decoding runs in `herd agent`"),
        (["--memory", str(tmp_path / "no" / "a.db")], "does not exist; create it first"),
        (["--index", str(tmp_path / "nothing")], "nothing"),
        (["--max-tool-steps", "-1"], "--max-tool-steps -1"),
    ):
        memory = [] if "--memory" in extra else ["--memory", str(tmp_path / "agent.db")]
        proc = herd_cli_inprocess(
            "serve", checkpoint, "--agent", "--port", "1", *memory, *extra, check=False
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "agent.db").exists()  # options are checked before the file is made


def test_code_interpreter_round_trip_through_the_openai_client(tiny_agent, tmp_path):
    """A trained model (tests/agent_model.py) served with --agent: the client asks, the agent
    calls the code interpreter in the sandbox, reads the result and answers with it."""
    from herd.checkpoint.loading import load_for_command
    from tests.agent_model import agent_turns

    checkpoint, _ = tiny_agent
    model, tok, _ = load_for_command(checkpoint, device="cpu", tokenizer_needed="to serve")
    srv = Running((model.eval(), tok))
    try:
        srv.state.agent = AgentService(agent_args(tmp_path, response_tokens=48), "agent", None,
                                       Toolbox(code=True), None)  # fmt: skip
        for question in agent_turns.arithmetic_questions(3, seed=3, held_out=True):
            reply = srv.client.chat.completions.create(
                model="agent", messages=[{"role": "user", "content": question["question"]}]
            )
            tools = reply.model_extra["agent"]["tools"]
            assert [t["name"] for t in tools] == ["code_interpreter"] and tools[0]["exit_code"] == 0
            assert tools[0]["arguments"]["code"].startswith("print(")
            assert tools[0]["output"] == question["answer"]  # the sandbox computed it
            # the answer comes after the result; how well this 64-wide model copies the digits
            # is tests/agent/test_agent_model.py's to measure, not the server's
            assert reply.choices[0].message.content.startswith("The answer is")
            with MemoryStore(tmp_path / "agent.db", "default") as store:
                trace = TurnLog(store).get(reply.model_extra["agent"]["turn"]).trace
            # the stored trace holds the tool step: the call, the ipython result, the final reply
            responses = [t for t in trace["modules"] if t["module"] == "response"]
            last = responses[-1]["messages"]
            assert last[-1] == {"role": "ipython", "content": tools[0]["output"]}
    finally:
        srv.stop()
