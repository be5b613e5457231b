"""A synthetic world for a BlenderBot 3-style agent, and training rows for every one of its modules
(issue 24's study, experiments/agent.py, and the tiny agent of tests/agent_model.py).

The world, seeded (`make_world`):

- **Entities** with invented, pronounceable names no pretraining could know (towns, rivers,
  inventors, mountains, bands), each with 1-3 facts ("Valmordek lies on the river Osselin."). Each
  has one document, {"title", "text"}, for `herd.agent.search.build_index`; distractor entities
  are in the index but never asked about; "ghost" entities are asked about but have no document
  (the agent searches and finds nothing). Training entities are the only ones whose names occur
  in training rows: held-out entities (and their answers) are only in the index.
- **Partners** (users) who state facts about themselves over a session ("I have a dog called
  Brindo.") and ask about them in a later one ("What is my dog called?"). The held-out partners'
  names and values (pet and family names, towns, and a held-out share of the jobs, instruments,
  dishes and colours) never occur in training rows.
- **Chit-chat** about topics (held-out topics are adjective-noun pairs never trained),
  greetings, and **arithmetic** ("What is 37 * 91?") for the code interpreter (held-out operand
  triples).

Module rows (`module_rows`): the agent's turn (herd/agent/agent.py) simulated on episodes of
these turns with the right answer at every step, each module's prompt built with the same
`herd.agent.modules.build_*_messages` call and arguments as the agent's, and the answer as the
assistant message. So the rows teach exactly the prompts the agent will send:

- search_decision: "search" for a question about an entity (a ghost too), else "do not search";
- memory_decision (only when the store retrieved notes, as in the agent): "access memory" when
  the partner asks about something they told, else "do not access memory";
- search_query: the entity's name and the attribute's word ("Valmordek river");
- memory_generator: the partner's note in their own words ("My dog is called Brindo.") or "no
  persona"; about the bot's own replies, "no persona";
- search_knowledge: the passage sentence that holds the answer, copied, or "no knowledge" when
  no passage is about the entity;
- memory_knowledge: the note that answers the question, copied exactly;
- contextual_knowledge: the topic of the latest user turn that has one (an entity, a chit-chat
  topic, a partner's pet, ...), copied, or "none";
- response: the knowledge's answer ("I looked it up: Valmordek lies on the river Osselin.", "Your
  dog is called Brindo."), or without knowledge a generic reply ("I'm not sure, I don't know
  much about Valmordek.", "I don't think you have told me that yet.");
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

    from agent_data import make_world, module_rows
    world = make_world(seed=0)
    rows = module_rows(world, {"search_decision": 500, "code_interpreter": 300}, seed=0)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

from herd.agent import modules as m
from herd.agent.memory import NO_PERSONA_NOTES, normalise_tokens, squash_text
from herd.agent.toolbox import Toolbox
from herd.tokenizer.chat import CODE_INTERPRETER

NO_PERSONA = NO_PERSONA_NOTES[1]  # "no persona": what the memory generator answers for nothing
NO_TOPIC = "none"
MODULE_ROWS = (*m.MODULES, "code_interpreter")  # the row kinds module_rows makes

# --- invented names --------------------------------------------------------------------------------

# Two syllables from small sets: a name is a few BPE pieces (tokenizer_corpus), so copying it is a
# short induction, which a small model learns in minutes.
ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "n", "r", "l", "s")


class Names:
    """Invented words, each handed out once per world."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def word(self) -> str:
        while True:
            w = "".join(
                self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
                for _ in range(2)
            )
            if w not in self.used:
                self.used.add(w)
                return w.capitalize()

    def person(self) -> str:
        return f"{self.word()} {self.word()}"


# --- entities and their documents --------------------------------------------------------------

# kind -> (introduction, {attribute: (sentence, questions, query, value kind)}). Two rules make
# the documents readable for a small model (module docstring): no document holds a query's
# attribute word (the index finds a question's document by its name alone, so the knowledge
# module sees one passage, not four others with the same kind of fact), and in a document the
# word before each value occurs once (" by", " in", " for", ...), not in the question or the
# module's instructions either, so the value is copied after it without doubt. (Titles are
# plural: "Velor Nights", "bakreik clocks", no article before a value.)
# fmt: off
KINDS: dict[str, tuple[str, dict[str, tuple[str, tuple[str, ...], str, str]]]] = {
    "town": ("{name} is a small town.", {
        "river": ("{name} was built beside a stream called {value}.",
                  ("Which river flows through {name}?", "What river is {name} on?",
                   "Do you know which river runs through {name}?"), "{name} river", "word"),
        "founded": ("{name} got its charter in {value}.",
                    ("When was {name} founded?", "In which year was {name} founded?"),
                    "{name} founded", "year"),
        "mayor": ("{name} is governed by {value}.",
                  ("Who is the mayor of {name}?", "Do you know who the mayor of {name} is?"),
                  "{name} mayor", "person"),
    }),
    "river": ("{name} is a stream.", {
        "length": ("{name} runs for {value} kilometres.",
                   ("How long is the {name}?", "What is the length of the {name}?"),
                   "{name} long", "km"),
        "sea": ("{name} ends in {value} Bay.",
                ("Which sea does the {name} flow into?", "Where does the {name} flow to?"),
                "{name} sea", "word"),
        "source": ("{name} starts at {value} Hills.",
                   ("Where does the {name} rise?", "Where is the source of the {name}?"),
                   "{name} source", "word"),
    }),
    "inventor": ("{name} was an inventor.", {
        "invention": ("{name} is remembered for {value}.",
                      ("What did {name} invent?", "What is {name} famous for inventing?"),
                      "{name} invented", "device"),
        "born": ("{name} grew up in {value}.",
                 ("Where was {name} born?", "Which town was {name} born in?"), "{name} born",
                 "word"),
        "died": ("{name} passed away during {value}.",
                 ("When did {name} die?", "In which year did {name} die?"), "{name} died",
                 "year"),
    }),
    "mountain": ("{name} is a mountain.", {
        "height": ("{name} reaches {value} metres.",
                   ("How high is {name}?", "What is the height of {name}?"), "{name} high",
                   "metres"),
        "climber": ("{name} was first scaled by {value}.",
                    ("Who first climbed {name}?", "Who was the first to climb {name}?"),
                    "{name} climbed", "person"),
    }),
    "band": ("{name} is a band.", {
        "singer": ("{name} is fronted by {value}.",
                   ("Who is the singer of {name}?", "Who sings in {name}?"), "{name} singer",
                   "person"),
        "album": ("{name} debuted with {value}.",
                  ("What is the first album of {name} called?",
                   "What was the first album by {name}?"), "{name} album", "title"),
        "formed": ("{name} got together in {value}.",
                   ("When was {name} formed?", "In which year was {name} formed?"),
                   "{name} formed", "year"),
    }),
}
DEVICES = ("looms", "kettles", "compasses", "lanterns", "clocks", "pumps", "presses", "locks",
           "stoves", "telescopes", "bellows", "ploughs")
TITLES = ("Nights", "Rivers", "Songs", "Lights", "Roads", "Winters", "Gardens", "Stones")
# fmt: on


@dataclasses.dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    sentence: str  # the document's sentence that holds the answer
    answer: str
    questions: tuple[str, ...]
    query: str  # what the query module writes


@dataclasses.dataclass(frozen=True)
class Entity:
    name: str
    kind: str
    facts: tuple[Fact, ...]

    def document(self) -> dict:
        intro = KINDS[self.kind][0].format(name=self.name)
        return {"title": self.name, "text": " ".join([intro, *(f.sentence for f in self.facts)])}


def _value(kind: str, names: Names, rng: random.Random) -> str:
    if kind == "word":
        return names.word()
    if kind == "person":
        return names.person()
    if kind == "year":
        return str(rng.randint(1100, 1899))
    if kind == "km":
        return str(rng.randint(40, 2900))
    if kind == "metres":
        return str(rng.randint(900, 6900))
    if kind == "device":
        return f"{names.word().lower()} {rng.choice(DEVICES)}"
    return f"{names.word()} {rng.choice(TITLES)}"  # title


def make_entity(kind: str, names: Names, rng: random.Random) -> Entity:
    name = names.word()
    attributes = KINDS[kind][1]
    chosen = rng.sample(sorted(attributes), rng.randint(1, min(3, len(attributes))))
    facts = []
    for attribute in sorted(chosen, key=list(attributes).index):
        sentence, questions, query, value_kind = attributes[attribute]
        value = _value(value_kind, names, rng)
        asks = tuple(q.format(name=name) for q in questions)
        filled = sentence.format(name=name, value=value)
        facts.append(Fact(name, attribute, filled, value, asks, query.format(name=name)))
    return Entity(name, kind, tuple(facts))


# --- partners ------------------------------------------------------------------------------------

# attribute -> (note, statements, questions, answer reply, acknowledgements, values)
# fmt: off
PERSONA: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str, tuple[str, ...], str]] = {
    "pet": ("My {animal} is called {v}.",
            ("My {animal} is called {v}.", "I have a {animal} called {v}.",
             "I have a {animal} and it is called {v}."),
            ("What is my {animal} called?", "Do you remember what my {animal} is called?",
             "What's the name of my {animal} again?"),
            "Your {animal} is called {v}.",
            ("What a lovely name for a {animal}!", "Aw, I love a {animal}. How old is it?"),
            "name"),
    "family": ("My {relative} is called {v}.",
               ("My {relative} is called {v}.", "I have a {relative} called {v}.",
                "My {relative}, who is called {v}, is visiting soon."),
               ("What is my {relative} called?", "Do you remember my {relative}'s name?",
                "What's my {relative} called again?"),
               "Your {relative} is called {v}.",
               ("That's a nice name.", "Do you see your {relative} often?"), "name"),
    "home": ("I live in {v}.",
             ("I live in {v}.", "These days I live in {v}.", "I moved to {v} and I live there now."),
             ("Where do I live?", "Do you remember where I live?", "Which town do I live in?"),
             "You live in {v}.",
             ("Is it nice to live there?", "I have heard good things about {v}."), "name"),
    "job": ("I work as a {v}.",
            ("I work as a {v}.", "I have been working as a {v} for years.",
             "These days I work as a {v}."),
            ("What work do I do?", "Do you remember what work I do?", "What do I work as?"),
            "You work as a {v}.",
            ("That sounds like interesting work.", "How long have you been a {v}?"), "job"),
    "instrument": ("I play the {v}.",
                   ("I play the {v}.", "I have played the {v} since I was a child.",
                    "In my free time I play the {v}."),
                   ("What instrument do I play?", "Do you remember what I play?",
                    "Which instrument do I play?"),
                   "You play the {v}.",
                   ("How lovely, the {v} is a beautiful instrument.", "Do you play in a band?"),
                   "instrument"),
    "food": ("My favourite food is {v}.",
             ("My favourite food is {v}.", "I love {v}, it is my favourite food.",
              "Nothing beats {v}, my favourite food."),
             ("What is my favourite food?", "Do you remember my favourite food?",
              "What food do I like best?"),
             "Your favourite food is {v}.",
             ("Yum, {v} sounds delicious.", "Good choice, I can see why."), "food"),
    "car": ("My car is {v}.",
            ("My car is {v}.", "I drive a {v} car.", "I just bought a car and it is {v}."),
            ("What colour is my car?", "Do you remember the colour of my car?",
             "What colour did I say my car is?"),
            "Your car is {v}.",
            ("A {v} car, nice!", "Is it a fast car?"), "colour"),
}
ANIMALS = ("dog", "cat", "parrot", "rabbit", "horse", "tortoise", "goat", "hamster")
RELATIVES = ("sister", "brother", "cousin", "daughter", "son", "aunt", "uncle")
# The last quarter of each list is held out: only held-out partners have those values.
VALUES = {
    "job": ("baker", "nurse", "plumber", "teacher", "pilot", "farmer", "tailor", "chemist",
            "welder", "dentist", "librarian", "carpenter", "florist", "butcher", "architect",
            "jeweller", "potter", "surveyor", "locksmith", "glazier", "beekeeper", "shepherd",
            "printer", "mason"),
    "instrument": ("cello", "violin", "flute", "trumpet", "piano", "harp", "banjo", "drums",
                   "oboe", "clarinet", "accordion", "ukulele", "bagpipes", "harmonica",
                   "saxophone", "tuba"),
    "food": ("lentil soup", "fish pie", "mushroom risotto", "apple crumble", "pea curry",
             "cheese toast", "pancakes", "noodle salad", "bean stew", "plum cake", "onion tart",
             "rice pudding", "tomato pasta", "lemon cake", "corn bread", "fried eggs"),
    "colour": ("green", "red", "blue", "yellow", "black", "white", "silver", "orange", "purple",
               "brown", "grey", "pink"),
}
# fmt: on


@dataclasses.dataclass(frozen=True)
class PersonaFact:
    attribute: str
    value: str
    slots: dict  # animal / relative

    def _fill(self, template: str) -> str:
        return template.format(v=self.value, **self.slots)

    @property
    def note(self) -> str:
        return self._fill(PERSONA[self.attribute][0])

    @property
    def statements(self) -> list[str]:
        return [self._fill(s) for s in PERSONA[self.attribute][1]]

    @property
    def questions(self) -> list[str]:
        return [self._fill(s) for s in PERSONA[self.attribute][2]]

    @property
    def answer_reply(self) -> str:
        return self._fill(PERSONA[self.attribute][3])

    @property
    def acknowledgements(self) -> list[str]:
        return [self._fill(s) for s in PERSONA[self.attribute][4]]

    @property
    def topic(self) -> str:
        """The noun phrase every statement of it contains (the contextual knowledge's answer)."""
        return (
            self.slots.get("animal")
            or self.slots.get("relative")
            or ("car" if self.attribute == "car" else self.value)
        )


@dataclasses.dataclass(frozen=True)
class Partner:
    user: str
    facts: tuple[PersonaFact, ...]


def make_partner(user: str, names: Names, rng: random.Random, held_out: bool) -> Partner:
    facts = []
    for attribute in rng.sample(sorted(PERSONA), rng.randint(2, 3)):
        kind = PERSONA[attribute][5]
        slots = {}
        if attribute == "pet":
            slots["animal"] = rng.choice(ANIMALS)
        if attribute == "family":
            slots["relative"] = rng.choice(RELATIVES)
        if kind == "name":
            value = names.word()
        else:
            values = VALUES[kind]
            cut = len(values) - len(values) // 4
            if not held_out:
                values = values[:cut]
            elif rng.random() < 0.5:  # held-out partners: half the time a held-out value
                values = values[cut:]
            value = rng.choice(values)
        facts.append(PersonaFact(attribute, value, slots))
    return Partner(user, tuple(facts))


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


# --- the world -----------------------------------------------------------------------------------


@dataclasses.dataclass
class World:
    entities: dict[str, list[Entity]]  # train, held_out, distractor, ghost
    partners: dict[str, list[Partner]]  # train, held_out
    invented: frozenset[str] = frozenset()  # every invented word of the world, lowercase

    def documents(self) -> list[dict]:
        """The index's documents: every entity's but the ghosts', in a fixed shuffled order."""
        docs = [e.document() for s in ("train", "held_out", "distractor") for e in self.entities[s]]
        random.Random(len(docs)).shuffle(docs)
        return docs

    def write_documents(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(d) + "\n" for d in self.documents()), "utf-8")
        return path


def make_world(
    seed: int = 0,
    entities: int = 400,
    held_out_entities: int = 60,
    distractors: int = 100,
    ghosts: int = 40,
    partners: int = 300,
    held_out_partners: int = 40,
) -> World:
    rng = random.Random(seed)
    names = Names(rng)
    kinds = sorted(KINDS)
    sizes = {"train": entities, "held_out": held_out_entities, "distractor": distractors,
             "ghost": ghosts}  # fmt: skip
    made = {s: [make_entity(kinds[i % len(kinds)], names, rng) for i in range(n)]
            for s, n in sizes.items()}  # fmt: skip
    people = {
        "train": [make_partner(f"partner-{i:04d}", names, rng, False) for i in range(partners)],
        "held_out": [
            make_partner(f"held-out-{i:04d}", names, rng, True) for i in range(held_out_partners)
        ],
    }
    query_words = {q.split()[-1] for _, facts in KINDS.values() for *_, q, _ in facts.values()}
    for e in (e for s in made.values() for e in s):
        assert not query_words & set(_words(e.document()["text"])), e.document()
    return World(made, people, frozenset(names.used))


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


# fmt: off
_STOP = frozenset(("the", "a", "an", "of", "in", "on", "is", "was", "who", "what", "which", "when",
                   "where", "does", "do", "did", "how", "by", "to", "and", "it", "its"))
# fmt: on


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w\w+", text.lower()) if w not in _STOP]


# --- the agent's turn, simulated ---------------------------------------------------------------


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
    """Held-out entity names and answers, and held-out partners' invented values, that occur in
    training rows (expected: none)."""
    text = squash_text(training_text(rows))
    secret = {e.name for e in world.entities["held_out"]}
    secret |= {
        f.answer for e in world.entities["held_out"] for f in e.facts if not f.answer.isdigit()
    }
    secret |= {f.value for p in world.partners["held_out"] for f in p.facts
               if PERSONA[f.attribute][5] == "name"}  # fmt: skip
    return sorted(s for s in secret if f" {squash_text(s)} " in f" {text} ")
