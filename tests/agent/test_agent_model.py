"""The tiny agent model (tests/agent_model.py) through the real agent: `Agent` with a `LocalChat`,
the world's `SearchIndex` and a `Toolbox` whose code interpreter runs in the real sandbox. It
calls the code interpreter for arithmetic and answers with the result, and decides to search for
questions about entities and not for chit-chat."""

from __future__ import annotations

import random

import pytest

from tests.agent_model import agent_turns, tiny_agent_world


@pytest.fixture(scope="module")
def agent(tiny_agent):
    from herd.agent.agent import Agent
    from herd.agent.llm import LocalChat
    from herd.agent.search import SearchIndex
    from herd.agent.toolbox import Toolbox
    from herd.checkpoint.convert import load
    from herd.tokenizer import load_tokenizer

    checkpoint, index = tiny_agent
    search = SearchIndex.load(index)
    chat = LocalChat(load(checkpoint), load_tokenizer(checkpoint))
    return Agent(chat, search=search, toolbox=Toolbox(search=search, code=True))


def ask(agent, text: str):
    return agent.respond([{"role": "user", "content": text}])


def test_arithmetic_runs_the_code_interpreter_and_answers_with_its_result(agent):
    from herd.agent.agent import Agent
    from herd.agent.toolbox import Toolbox

    # the code interpreter alone: with brave_search declared too, this 64-wide model copies the
    # numbers into its code less reliably
    agent = Agent(agent.chat, toolbox=Toolbox(code=True))
    questions = agent_turns.arithmetic_questions(6, seed=11, held_out=True)  # triples never trained
    right = computed = 0
    for q in questions:
        turn = ask(agent, q["question"])
        assert turn.decisions["search"] is False
        assert [t["name"] for t in turn.tools] == ["code_interpreter"], turn.modules[-1].output
        call = turn.tools[0]
        assert call["exit_code"] == 0 and call["arguments"]["code"].startswith("print(")
        # the reply states what the sandbox printed, after the ipython turn
        assert turn.reply.startswith("The answer is")
        assert [t.module for t in turn.modules][-2:] == ["response", "response"]
        # a 64-wide model copies digits most of the time, into the code and out of the result
        computed += call["output"] == q["answer"]
        right += call["output"] in turn.reply
    assert computed >= 4 and right >= 4, f"of {len(questions)}: {computed} computed, {right} told"


def test_search_decision_for_entities_not_for_chit_chat(agent):
    world = tiny_agent_world()
    rng = random.Random(5)
    asks = [f["question"] for f in agent_turns.search_questions(world, 8, seed=5)]
    chat = [agent_turns.chitchat_turn(rng, held_out=True).text for _ in range(3)]
    chat += [agent_turns.greeting_turn(rng).text for _ in range(2)]
    partner = world.partners["held_out"][0]
    chat += [agent_turns.statement_turn(partner.facts[0], rng).text,
             agent_turns.personal_turn(partner.facts[1], rng).text]  # fmt: skip
    searched = [ask(agent, q).decisions["search"] for q in asks]
    assert sum(searched) >= 7, list(zip(asks, searched, strict=True))
    not_searched = [not ask(agent, t).decisions["search"] for t in chat]
    assert sum(not_searched) >= 6, list(zip(chat, not_searched, strict=True))

    # a search turn runs the query, reads the index and passes its passages on
    turn = ask(agent, asks[searched.index(True)])
    names = [t.module for t in turn.modules]
    assert names[:2] == ["search_decision", "search_query"]
    assert "passages" in turn.knowledge  # the index was asked (a made-up query may find nothing)
