"""Training rows for every module of a BlenderBot 3-style agent, made on the study's world
(agent_world.py, agent_turns.py) for issue 24's study (experiments/agent.py) and the tiny agent of
tests/agent_model.py.

Module rows (`module_rows`): the agent's turn (herd/agent/agent.py) simulated on episodes of
these turns with the right answer at every step, each module's prompt built with the same
`herd.agent.modules.build_*_messages` call and arguments as the agent's, and the answer as the
assistant message. So the rows teach exactly the prompts the agent will send:

- search_decision: "search" for a question about an entity (a ghost too), else "do not search";
- memory_decision (only when the store retrieved notes, as in the agent): "access memory" when
  the partner asks about something they told, else "do not access memory";
- search_query: the entity's name and the attribute's word ("Dalpe market");
- memory_generator: the partner's note in their own words ("My dog is called Brindo.") or "no
  persona"; about the bot's own replies, "no persona";
- search_knowledge: the passage sentence that holds the answer, copied, or "no knowledge" when
  no passage is about the entity;
- memory_knowledge: the note that answers the question, copied exactly;
- contextual_knowledge: the topic of the latest user turn that has one (an entity, a chit-chat
  topic, a partner's pet, ...), copied, or "none";
- response: the knowledge's answer ("I looked it up: Dalpe holds a fair every Tuesday.", "Your
  dog is called Brindo."), or without knowledge a generic reply ("I'm not sure, I don't know
  much about Dalpe.", "I don't think you have told me that yet.");
- code_interpreter (with a toolbox, for arithmetic): `<|python_tag|>print(37 * 91)<|eom_id|>`,
  the result in the ipython role, then "The answer is 3367.".

Each module's rows are shared between kinds of answer as `BALANCE` says (the episodes alone give
far more "do not" decisions than "do" ones). Passages for search knowledge come from a small
lexical search (`LexicalSearch`, BM25-like) over the training and distractor documents, ranked
as the real index ranks them (the entity's own document first). Response rows come with and
without `Toolbox(...).prompt` (code only, or code and brave_search, with random "Today Date:"
lines), so the model works with and without tools. Earlier assistant turns in a row carry
"weight": 0. Every answer is read back by its module's parser (`check_row`), so the rows only
hold answers the agent would read as meant.

    from agent_data import module_rows
    from agent_world import make_world
    world = make_world(seed=0)
    rows = module_rows(world, {"search_decision": 500, "code_interpreter": 300}, seed=0)
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import random
import re
from collections import Counter

from agent_turns import (
    ANSWER,
    FORGOT,
    FOUND,
    NO_CALCULATOR,
    UNKNOWN,
    Note,
    Turn,
    arithmetic_task,
    arithmetic_turn,
    chitchat_turn,
    duplicate,
    entity_turn,
    greeting_turn,
    personal_turn,
    retrieve,
    statement_turn,
)  # fmt: skip
from agent_world import PERSONA, Partner, PersonaFact, World, _words

from herd.agent import modules as m
from herd.agent.memory import NO_PERSONA_NOTES, squash_text
from herd.agent.toolbox import Toolbox
from herd.tokenizer.chat import CODE_INTERPRETER

NO_PERSONA = NO_PERSONA_NOTES[1]  # "no persona": what the memory generator answers for nothing
NO_TOPIC = "none"
MODULE_ROWS = (*m.MODULES, "code_interpreter")  # the row kinds module_rows makes


# --- a lexical search over the training documents ------------------------------------------------


class LexicalSearch:
    """BM25-like ranking (words of two or more characters, no stop words, a title bonus) of the
    training and distractor documents, standing in for the index in training rows (held-out
    documents must not occur in them)."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs
        self.words = [Counter(_words(d["text"])) for d in docs]
        self.titles = [set(_words(d["title"])) for d in docs]
        df = Counter(w for c in self.words for w in c)
        n = len(docs)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.index: dict[str, list[int]] = {}
        for i, c in enumerate(self.words):
            for w in c:
                self.index.setdefault(w, []).append(i)

    def search(self, query: str, k: int = m.PASSAGES) -> list[dict]:
        scores: Counter = Counter()
        for w in set(_words(query)):
            for i in self.index.get(w, ()):
                scores[i] += self.idf[w] * (1.5 if w in self.titles[i] else 1.0)
        ranked = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        return [self.docs[i] for i in ranked]


def latest_topic(turns: list[Turn]) -> str:
    return next((t.topic for t in reversed(turns) if t.topic), NO_TOPIC)


def random_date(rng: random.Random) -> datetime.date:
    return datetime.date(2023, 1, 1) + datetime.timedelta(days=rng.randrange(8 * 365))


class _Declared:
    """A stand-in search backend: Toolbox.prompt only asks whether there is one."""


def tool_prompt(messages: list[dict], search: bool, rng: random.Random) -> list[dict]:
    """`Toolbox(search=..., code=True).prompt(messages)` as the agent calls it, on a random day."""
    box = Toolbox(_Declared() if search else None, code=True)
    return box.prompt(messages, date=random_date(rng))


def gold_reply(turn: Turn, knowledge: str | None, note: Note | None, rng: random.Random) -> str:
    """The response module's answer, given the knowledge the turn produced."""
    if turn.kind in ("entity", "ghost"):
        if knowledge:
            return rng.choice(FOUND).format(knowledge=knowledge)
        return rng.choice(UNKNOWN).format(name=turn.fact.entity)
    if turn.kind == "personal":
        if note is not None and note.text == turn.persona.note:
            return turn.persona.answer_reply
        return rng.choice(FORGOT)
    if turn.kind == "statement":
        return rng.choice(turn.persona.acknowledgements)
    if turn.kind == "arithmetic":
        return NO_CALCULATOR
    return rng.choice(turn.replies)


@dataclasses.dataclass
class Setup:
    """What the simulated agent has: a search backend, a memory store, a toolbox."""

    search: bool = True
    memory: bool = True
    tools: str | None = None  # None, "code", "code+search"


def _response_prompt(dialogue, knowledge, note, entity, tools, rng) -> list[dict]:
    """The response module's prompt as the agent builds it (with the toolbox's system message when
    there are tools); earlier replies carry "weight": 0."""
    messages = m.build_response_messages(
        dialogue, search_knowledge=knowledge, memory_note=note, entity=entity,
        system=m.RESPONSE_SYSTEM,
    )  # fmt: skip
    if tools:
        messages = tool_prompt(messages, tools == "code+search", rng)
    return [{**x, "weight": 0} if x["role"] == "assistant" else x for x in messages]


def _code_call(code: str, result: str, prompt: tuple) -> list[dict]:
    """The response prompt, the code interpreter's call and its result (the final answer follows)."""
    call = {"function": {"name": CODE_INTERPRETER, "arguments": {"code": code}}}
    return [*_response_prompt(*prompt), {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "ipython", "content": result}]  # fmt: skip


def simulate(
    turns: list[Turn],
    setup: Setup,
    search: LexicalSearch,
    rng: random.Random,
    notes: list[Note] | None = None,
    wanted=lambda module, kind: True,
) -> tuple[list[tuple[str, str, list[dict]]], list[Note]]:
    """The rows of one session of `turns` as herd/agent/agent.py would prompt each module were
    every answer right: (module, kind of row, messages with the answer last), for the modules
    and kinds `wanted` accepts; and the notes stored after it (`notes`: the store's notes from
    earlier sessions)."""
    notes = list(notes or [])
    rows: list[tuple[str, str, list[dict]]] = []
    dialogue: list[dict] = []

    def emit(module: str, kind: str, answer: str | dict, build, *args) -> None:
        """A row, if wanted: build(*args) (the module's prompt), then the answer."""
        if wanted(module, kind):
            reply = answer if isinstance(answer, dict) else {"role": "assistant", "content": answer}
            rows.append((module, kind, [*build(*args), reply]))

    for i, turn in enumerate(turns):
        dialogue.append({"role": "user", "content": turn.text})
        if setup.search:
            decision = m.SEARCH if turn.search else m.NO_SEARCH
            emit("search_decision", decision, decision, m.build_search_decision_messages, dialogue)
        retrieved = retrieve(notes, turn.text) if setup.memory else []
        recalled = bool(retrieved) and turn.recall
        if retrieved:
            decision = m.ACCESS_MEMORY if recalled else m.NO_ACCESS_MEMORY
            emit("memory_decision", decision, decision, m.build_memory_decision_messages,
                 dialogue, retrieved)  # fmt: skip
        knowledge = None
        if setup.search and turn.search:
            emit("search_query", turn.kind, turn.fact.query, m.build_search_query_messages,
                 dialogue)  # fmt: skip
            passages = search.search(turn.fact.query)
            if passages:
                held = any(p["title"] == turn.fact.entity for p in passages)
                answer = turn.fact.sentence if held else m.NO_KNOWLEDGE
                emit("search_knowledge", "found" if held else "none", answer,
                     m.build_search_knowledge_messages, dialogue, passages)  # fmt: skip
                knowledge = turn.fact.sentence if held else None
        if setup.memory:
            emit("memory_generator", "note" if turn.note else "none", turn.note or NO_PERSONA,
                 m.build_memory_generator_messages, dialogue, "partner")  # fmt: skip
        used = None
        if recalled:
            used = next((n for n in retrieved if n.text == turn.persona.note), None)
            if used is not None:  # (a question about a fact never stored is not copied)
                emit("memory_knowledge", "note", used.text, m.build_memory_knowledge_messages,
                     dialogue, retrieved)  # fmt: skip
        if setup.memory and turn.note and not duplicate(notes, turn.note):
            notes.append(Note(turn.note))
        entity = None
        if m.entity_needed(bool(knowledge), used is not None) and len(dialogue) > 1:
            topic = latest_topic(turns[: i + 1])
            emit("contextual_knowledge", "none" if topic == NO_TOPIC else "topic", topic,
                 m.build_contextual_knowledge_messages, dialogue)  # fmt: skip
            entity = m.parse_contextual_knowledge(topic, dialogue)
        prompt = (dialogue, knowledge, used, entity, setup.tools, rng)
        if turn.kind == "arithmetic" and setup.tools:
            expr, result = arithmetic_task(*turn.arithmetic)
            reply = ANSWER.format(result=result)
            emit("code_interpreter", "call", reply, _code_call, f"print({expr})", result, prompt)
        else:
            reply = gold_reply(turn, knowledge, used, rng)
            kind = turn.kind + ("+knowledge" if knowledge or used else "")
            emit("response", kind, reply, _response_prompt, *prompt)
        dialogue.append({"role": "assistant", "content": reply})
        if setup.memory:
            emit("memory_generator", "self", NO_PERSONA, m.build_memory_generator_messages,
                 dialogue, "self")  # fmt: skip
    return rows, notes


# --- episodes ----------------------------------------------------------------------------------


def _opening(rng: random.Random, held_out: bool, max_turns: int = 2) -> list[Turn]:
    """0 to `max_turns` turns of small talk before the point of a session."""
    return [
        greeting_turn(rng) if rng.random() < 0.5 else chitchat_turn(rng, held_out)
        for _ in range(rng.choice([0, 0, 1, 1, 2][: max_turns * 2 + 1]))
    ]


def partner_sessions(
    partner: Partner, rng: random.Random, held_out: bool = False, more: PersonaFact | None = None
):
    """Session one (small talk and the partner's statements, in random order) and session two
    (questions about some facts after optional small talk; `more`: a new fact stated among them,
    which recalls nothing)."""
    first = [*_opening(rng, held_out, 1), *(statement_turn(f, rng) for f in partner.facts)]
    if rng.random() < 0.5:
        first.insert(rng.randint(1, len(first)), chitchat_turn(rng, held_out))
    asked = rng.sample(list(partner.facts), rng.randint(1, len(partner.facts)))
    second = [*_opening(rng, held_out, 1), *(personal_turn(f, rng) for f in asked)]
    if more is not None:
        second.insert(rng.randint(0, len(second)), statement_turn(more, rng))
    return first, second


# Shares of each module's rows by kind (the rest of a module's rows come as they fall): the
# episodes give far more "do not" than "do" decisions, and more of the bot's own "no persona"
# notes than of the partner's notes.
# fmt: off
BALANCE = {
    "search_decision": {m.SEARCH: 0.4, m.NO_SEARCH: 0.6},
    "memory_decision": {m.ACCESS_MEMORY: 0.55, m.NO_ACCESS_MEMORY: 0.45},
    "memory_generator": {"note": 0.55, "none": 0.25, "self": 0.2},
    "contextual_knowledge": {"topic": 0.85, "none": 0.15},
    "response": {"entity+knowledge": 0.25, "entity": 0.08, "ghost": 0.04, "personal+knowledge": 0.2,
                 "personal": 0.08, "statement": 0.12, "chitchat": 0.11, "greeting": 0.07,
                 "arithmetic": 0.05},
}
# fmt: on


def module_rows(world: World, quotas: dict[str, int], seed: int = 0) -> list[dict]:
    """SFT rows ({"messages", "module", "kind"}) of the training world: quotas[module] rows of each
    module in MODULE_ROWS named (shared between kinds of row as BALANCE says), shuffled. Every
    answer is checked with its module's parser."""
    rng = random.Random(seed)
    unknown = set(quotas) - set(MODULE_ROWS)
    if unknown:
        raise ValueError(f"unknown modules {sorted(unknown)}; expected some of {MODULE_ROWS}")
    search = LexicalSearch(
        [e.document() for s in ("train", "distractor") for e in world.entities[s]]
    )
    facts = [f for e in world.entities["train"] for f in e.facts]
    ghosts = [f for e in world.entities["ghost"] for f in e.facts]
    targets: dict[tuple[str, str], int] = {}
    for module, n in quotas.items():
        shares = BALANCE.get(module, {"*": 1.0})
        for kind, part in shares.items():
            targets[module, kind] = max(1, round(n * part)) if n else 0
    pools: dict[tuple[str, str], list[list[dict]]] = {k: [] for k in targets}

    def wanted(module: str, kind: str) -> bool:
        key = (module, kind if (module, kind) in targets else "*")
        return len(pools.get(key, ())) < targets.get(key, 0)

    def take(made) -> None:
        for module, kind, messages in made:
            key = (module, kind if (module, kind) in targets else "*")
            if len(pools[key]) < targets[key]:
                check_row(module, messages)
                pools[key].append(messages)

    def setup(tools_share: float = 0.5) -> Setup:
        tools = None
        if rng.random() < tools_share:
            tools = rng.choice(["code", "code+search"])
        return Setup(search=rng.random() < 0.9, memory=rng.random() < 0.8, tools=tools)

    partners = world.partners["train"]
    for episode in range(200_000):
        if all(len(pools[k]) >= n for k, n in targets.items()):
            break
        kind = episode % 4
        if kind == 0:  # questions about entities (a tenth about ghosts), after small talk
            turns = _opening(rng, False)
            for _ in range(rng.randint(1, 2)):
                ghost = rng.random() < 0.1
                turns.append(entity_turn(rng.choice(ghosts if ghost else facts), rng, ghost))
            take(simulate(turns, setup(), search, rng, wanted=wanted)[0])
        elif kind == 1:  # a partner's two sessions, the notes kept between them
            partner = partners[(episode // 4) % len(partners)]
            more = rng.choice(rng.choice(partners).facts) if rng.random() < 0.5 else None
            if more is not None and more.attribute in {f.attribute for f in partner.facts}:
                more = None
            first, second = partner_sessions(partner, rng, more=more)
            where = setup()
            where.memory = where.memory or rng.random() < 0.7
            made, notes = simulate(first, where, search, rng, wanted=wanted)
            take(made)
            take(simulate(second, where, search, rng, notes, wanted=wanted)[0])
        elif kind == 2:  # arithmetic, usually with a code interpreter
            turns = [*_opening(rng, False, 1), arithmetic_turn(rng)]
            take(simulate(turns, setup(0.85), search, rng, wanted=wanted)[0])
        else:  # small talk, and a mixed session
            turns = [*_opening(rng, False), chitchat_turn(rng)]
            if rng.random() < 0.5:
                turns.append(
                    rng.choice([entity_turn(rng.choice(facts), rng), arithmetic_turn(rng)])
                )
            take(simulate(turns, setup(), search, rng, wanted=wanted)[0])
    else:
        short = {f"{k[0]}/{k[1]}": f"{len(pools[k])} of {n}" for k, n in targets.items()
                 if len(pools[k]) < n}  # fmt: skip
        raise RuntimeError(f"could not fill the quotas: {short}")
    rows = [{"messages": msgs, "module": module, "kind": kind}
            for (module, kind), made in pools.items() for msgs in made]  # fmt: skip
    rng.shuffle(rows)
    return rows


def check_row(module: str, messages: list[dict]) -> None:
    """Assert that the module's parser reads the row's answer as meant (the agent would act on
    it): decisions read as their label, copies come back unchanged."""
    answer = messages[-1]["content"]
    prompt = messages[:-1]
    if module == "search_decision":
        assert m.parse_search_decision(answer) == (answer == m.SEARCH), answer
    elif module == "memory_decision":
        assert m.parse_memory_decision(answer) == (answer == m.ACCESS_MEMORY), answer
    elif module == "search_query":
        assert m.parse_search_query(answer) == answer, answer
    elif module == "memory_generator":
        assert m.parse_memory_generator(answer) == (None if answer == NO_PERSONA else answer)
    elif module == "search_knowledge":
        expected = None if answer == m.NO_KNOWLEDGE else answer
        assert m.parse_search_knowledge(answer) == expected, answer
    elif module == "memory_knowledge":
        shown = [Note(line.split(": ", 1)[1], "partner") for line in _lines(prompt)
                 if line.startswith(m.PERSONA["partner"] + ": ")]  # fmt: skip
        picked = m.parse_memory_knowledge(answer, shown)
        assert picked is not None and picked.text == answer, (answer, shown)
    elif module == "contextual_knowledge":
        dialogue = _transcript_dialogue(prompt)
        parsed = m.parse_contextual_knowledge(answer, dialogue)
        assert parsed == (None if answer == NO_TOPIC else answer), (answer, dialogue)
    elif module in ("response", "code_interpreter"):
        assert m.parse_response(answer) == answer, answer
        if module == "code_interpreter":
            call = messages[-3]["tool_calls"][0]["function"]
            assert call["name"] == CODE_INTERPRETER and messages[-2]["role"] == "ipython"


def _lines(prompt: list[dict]) -> list[str]:
    return prompt[-1]["content"].splitlines()


def _transcript_dialogue(prompt: list[dict]) -> list[dict]:
    """The dialogue behind a transcript prompt ("Person 1: ..." lines)."""
    out = []
    for line in _lines(prompt):
        for who, role in ((m.PARTNER, "user"), (m.SELF, "assistant")):
            if line.startswith(who + ": "):
                out.append({"role": role, "content": line[len(who) + 2 :]})
    return out


def training_text(rows: list[dict], digits: bool = True) -> str:
    """The rows' text, one message a line (a corpus for the BPE). Without `digits`, every digit is
    dropped: a BPE trained on that keeps numbers split into single digits, which a small model
    learns to copy much sooner than multi-digit tokens."""
    lines = []
    for row in rows:
        for msg in row["messages"]:
            lines.append(msg.get("content", ""))
            for call in msg.get("tool_calls") or []:
                lines.append(call["function"]["arguments"]["code"])
    text = "\n".join(lines)
    return text if digits else re.sub(r"[0-9]", "", text)


def tokenizer_corpus(rows: list[dict], world: World) -> str:
    """A corpus for the BPE: the rows' text without digits and without the world's invented
    words. Its merges make whole tokens of the prompts' English words, while numbers stay single
    digits and every name, trained or held out, is spelled in letters and common pairs: a small
    model learns to copy those far sooner than names made of rarer pieces (a BPE on the rows
    alone gives frequent training names a token of their own, which held-out names never get)."""
    text = re.sub(r"[0-9]", "", training_text(rows))
    return re.sub(r"[A-Za-z]+", lambda w: "" if w[0].lower() in world.invented else w[0], text)


def held_out_leaks(world: World, rows: list[dict]) -> list[str]:
    """Held-out entity names (so no held-out fact either) and held-out partners' invented values
    that occur in training rows (expected: none)."""
    text = squash_text(training_text(rows))
    secret = {e.name for e in world.entities["held_out"]}
    secret |= {f.value for p in world.partners["held_out"] for f in p.facts
               if PERSONA[f.attribute][5] == "name"}  # fmt: skip
    return sorted(s for s in secret if f" {squash_text(s)} " in f" {text} ")
