"""User turns of the agent study's world (agent_world.py) and what each module should make of
them, the memory notes as the modules see them, and the held-out evaluation sets
(experiments/agent.py).
"""

from __future__ import annotations

import dataclasses
import random
import re

from agent_world import Fact, PersonaFact, World

from herd.agent import modules as m
from herd.agent.memory import normalise_tokens, squash_text

# --- chit-chat, greetings, arithmetic -------------------------------------------------------------

# fmt: off
# Chit-chat topics: an adjective and a noun, so that the entity module copies rather than recalls
# a short list (`topic_held_out` keeps a fifth of the pairs for held-out turns). No word of a
# partner's notes ("food", "car", "play", "work", "live", ...), so small talk retrieves no note.
TOPIC_ADJECTIVES = ("old", "new", "rainy", "sunny", "quiet", "noisy", "early", "late", "tiny",
                    "huge", "wild", "strange")
TOPIC_NOUNS = ("films", "songs", "trains", "gardens", "kites", "walks", "storms", "books",
               "poems", "puzzles", "markets", "bridges", "clouds", "boats", "castles", "museums",
               "forests", "islands", "birds", "stars", "lakes", "maps", "clocks", "lamps", "tents")
CHITCHAT = (
    ("Do you like {topic}?", ("I do, {topic} can be great fun. What about you?",
                              "Honestly, I could talk about {topic} all day.")),
    ("What do you think about {topic}?", ("I think {topic} are lovely, to be honest.",
                                          "I have mixed feelings about {topic}. And you?")),
    ("I have been thinking about {topic} a lot lately.", ("Oh, what about {topic} is on your mind?",
                                                         "That sounds nice. Tell me more!")),
    ("Let's chat about {topic}.", ("Sure! What do you like most about {topic}?",
                                  "Happy to. {topic_cap} always cheer me up.")),
)
GREETINGS = (
    ("Hi!", ("Hello! How are you today?", "Hi there! What's on your mind?")),
    ("Hello, how are you?", ("I'm doing well, thanks for asking. How about you?",)),
    ("Good morning!", ("Good morning to you too! How did you sleep?",)),
    ("Thanks, that helps.", ("You're welcome! Anything else?", "Glad I could help.")),
    ("Nice talking to you.", ("Likewise! Come back any time.",)),
    ("I'm fine, thank you.", ("Good to hear. What shall we talk about?",)),
)
ARITHMETIC = ("What is {expr}?", "Can you work out {expr}?", "Please compute {expr}.",
              "How much is {expr}?")
UNKNOWN = ("I'm not sure, I don't know much about {name}.", "Sorry, I don't know that about {name}.")
FOUND = ("{knowledge}", "I looked it up: {knowledge}")
FORGOT = ("I don't think you have told me that yet.", "I'm sorry, I don't remember that.")
NO_CALCULATOR = "I can't work that out without a calculator."
ANSWER = "The answer is {result}."
# fmt: on


def arithmetic_task(a: int, op: str, b: int) -> tuple[str, str]:
    """The expression ("37 * 91") and its value."""
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a} {op} {b}", str(value)


def arithmetic_held_out(a: int, op: str, b: int) -> bool:
    """A fixed quarter of the (a, op, b) triples, never in training rows."""
    return (a * 7 + b * 13 + "+-*".index(op)) % 4 == 0


def random_arithmetic(rng: random.Random, held_out: bool) -> tuple[int, str, int]:
    while True:
        op = rng.choice("+-*")
        a, b = (
            (rng.randint(11, 99), rng.randint(11, 99))
            if op == "*"
            else (rng.randint(100, 999), rng.randint(100, 999))
        )
        if arithmetic_held_out(a, op, b) == held_out:
            return a, op, b


# --- user turns ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Turn:
    """One user turn and what each module should make of it."""

    kind: str  # entity, ghost, chitchat, greeting, statement, personal, arithmetic
    text: str
    search: bool = False  # the search decision's answer
    recall: bool = False  # asks about something the partner told (memory decision's answer)
    note: str | None = None  # the memory generator's note about the partner
    topic: str | None = None  # the noun phrase the contextual knowledge module may pick
    fact: Fact | None = None
    persona: PersonaFact | None = None
    arithmetic: tuple[int, str, int] | None = None
    replies: tuple[str, ...] = ()  # for chit-chat and greetings


def entity_turn(fact: Fact, rng: random.Random, ghost: bool = False) -> Turn:
    return Turn("ghost" if ghost else "entity", rng.choice(fact.questions), search=True,
                topic=fact.entity, fact=fact)  # fmt: skip


def topic_held_out(adjective: str, noun: str) -> bool:
    """A fixed fifth of the adjective-noun pairs, never in training rows (their words are)."""
    return (TOPIC_ADJECTIVES.index(adjective) * 7 + TOPIC_NOUNS.index(noun)) % 5 == 0


def chitchat_turn(rng: random.Random, held_out: bool = False) -> Turn:
    while True:
        adjective, noun = rng.choice(TOPIC_ADJECTIVES), rng.choice(TOPIC_NOUNS)
        if topic_held_out(adjective, noun) == held_out:
            break
    topic = f"{adjective} {noun}"
    text, replies = rng.choice(CHITCHAT)
    fill = {"topic": topic, "topic_cap": topic[0].upper() + topic[1:]}
    return Turn("chitchat", text.format(**fill), topic=topic,
                replies=tuple(r.format(**fill) for r in replies))  # fmt: skip


def greeting_turn(rng: random.Random) -> Turn:
    text, replies = rng.choice(GREETINGS)
    return Turn("greeting", text, replies=replies)


def statement_turn(fact: PersonaFact, rng: random.Random) -> Turn:
    return Turn("statement", rng.choice(fact.statements), note=fact.note, topic=fact.topic,
                persona=fact)  # fmt: skip


def personal_turn(fact: PersonaFact, rng: random.Random) -> Turn:
    text = rng.choice(fact.questions)
    # "What is my dog called?" names its topic; "Where do I live?" does not
    said = f" {squash_text(fact.topic)} " in f" {squash_text(text)} "
    return Turn("personal", text, recall=True, topic=fact.topic if said else None, persona=fact)


def arithmetic_turn(rng: random.Random, held_out: bool = False) -> Turn:
    a, op, b = random_arithmetic(rng, held_out)
    expr, _ = arithmetic_task(a, op, b)
    return Turn("arithmetic", rng.choice(ARITHMETIC).format(expr=expr), arithmetic=(a, op, b))


# --- memory notes ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Note:
    """A note as the modules see it (herd.agent.memory.MemoryEntry has these fields too)."""

    text: str
    speaker: str = "partner"


def retrieve(notes: list[Note], text: str, k: int = m.PASSAGES) -> list[Note]:
    """The notes sharing a content word with `text`, most shared first (MemoryStore.retrieve's
    candidates; it ranks them with BM25)."""
    query = set(normalise_tokens(text, drop_pronouns=True))
    scored = [(len(query & set(normalise_tokens(n.text, drop_pronouns=True))), i, n)
              for i, n in enumerate(notes)]  # fmt: skip
    return [n for s, _, n in sorted(scored, key=lambda x: (-x[0], x[1])) if s > 0][:k]


def duplicate(notes: list[Note], text: str) -> bool:
    """MemoryStore's near-duplicate rule: the new note holds every word of an earlier one."""
    new = set(normalise_tokens(text))
    return any(not set(normalise_tokens(n.text)) - new for n in notes)


# --- held-out evaluation sets ------------------------------------------------------------------


def search_questions(world: World, n: int, seed: int = 0, split: str = "held_out") -> list[dict]:
    """Questions about `split` entities: {question, answer, entity, attribute, query, sentence}."""
    rng = random.Random(seed)
    facts = [f for e in world.entities[split] for f in e.facts]
    rng.shuffle(facts)
    return [
        {"question": rng.choice(f.questions), "answer": f.answer, "entity": f.entity,
         "attribute": f.attribute, "query": f.query, "sentence": f.sentence}
        for f in facts[:n]
    ]  # fmt: skip


def memory_cases(world: World, n: int, seed: int = 0, split: str = "held_out") -> list[dict]:
    """For each of `n` partners: session one's user turns (a greeting, the statements, a
    chit-chat turn) and, per fact, a later question: {user, session_one, probes: [{question,
    answer, note}]}."""
    rng = random.Random(seed)
    out = []
    for partner in world.partners[split][:n]:
        turns = [greeting_turn(rng), *(statement_turn(f, rng) for f in partner.facts)]
        turns.insert(rng.randint(2, len(turns)), chitchat_turn(rng, split == "held_out"))
        probes = [{"question": rng.choice(f.questions), "answer": f.value, "note": f.note,
                   "statement": next(t.text for t in turns if t.persona == f)}
                  for f in partner.facts]  # fmt: skip
        out.append({"user": partner.user, "session_one": [t.text for t in turns], "probes": probes})
    return out


def decision_turns(world: World, n: int, seed: int = 0) -> dict[str, list[dict]]:
    """Held-out labelled turns. "search": {text, search} over entity questions, chit-chat,
    greetings, statements, personal questions and arithmetic, half of them entity questions;
    "memory": {text, notes, memory}: a held-out partner's turns that retrieve some of their notes
    (as the memory decision sees them), personal questions (access) and statements and
    chit-chat (do not)."""
    rng = random.Random(seed)
    facts = [f for e in world.entities["held_out"] for f in e.facts]
    search = []
    for i in range(n):
        if i % 2 == 0:
            turn = entity_turn(rng.choice(facts), rng)
        else:
            partner = rng.choice(world.partners["held_out"])
            fact = rng.choice(partner.facts)
            turn = rng.choice([chitchat_turn(rng, True), greeting_turn(rng), arithmetic_turn(rng, True),
                               statement_turn(fact, rng), personal_turn(fact, rng)])  # fmt: skip
        search.append({"text": turn.text, "kind": turn.kind, "search": turn.search})
    memory = []
    partners = world.partners["held_out"]
    wanted = {True: (n + 1) // 2, False: n // 2}  # personal questions, other turns
    for i in range(20 * n):
        if not any(wanted.values()):
            break
        partner = partners[i % len(partners)]
        notes = [Note(f.note) for f in partner.facts]
        if wanted[True] and (i % 2 == 0 or not wanted[False]):
            turn = personal_turn(rng.choice(partner.facts), rng)
        else:  # a new fact, or chit-chat, that shares a word with a note
            mine = {f.attribute for f in partner.facts}
            for _ in range(50):
                other = rng.choice(rng.choice(partners).facts)
                turn = statement_turn(other, rng) if other.attribute not in mine else None
                turn = turn or chitchat_turn(rng, True)
                if retrieve(notes, turn.text):
                    break
        shown = retrieve(notes, turn.text)
        if shown and wanted[turn.recall]:
            wanted[turn.recall] -= 1
            memory.append({"text": turn.text, "kind": turn.kind, "memory": turn.recall,
                           "notes": [x.text for x in shown]})  # fmt: skip
    return {"search": search, "memory": memory}


def arithmetic_questions(n: int, seed: int = 0, held_out: bool = True) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turn = arithmetic_turn(rng, held_out)
        expr, result = arithmetic_task(*turn.arithmetic)
        out.append({"question": turn.text, "expression": expr, "answer": result})
    return out


def answer_in(answer: str, text: str) -> bool:
    """Whether `answer` occurs in `text` as whole words, ignoring case."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text or "", re.IGNORECASE) is not None
