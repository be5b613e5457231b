"""The synthetic world of issue 24's agent study (experiments/agent.py; the tiny agent of
tests/agent_model.py): invented entities with documents for the search index, and partners who
tell the agent about themselves. Seeded (`make_world`):

The world, seeded (`make_world`):

- **Entities** with invented, pronounceable names no pretraining could know (towns, rivers,
  inventors, mountains, bands), each with 1-3 facts whose values are common words ("Dalpe holds
  a fair every Tuesday.", see KINDS). Each
  has one document, {"title", "text"}, for `herd.agent.search.build_index`; distractor entities
  are in the index but never asked about; "ghost" entities are asked about but have no document
  (the agent searches and finds nothing). Training entities are the only ones whose names occur
  in training rows: which value a held-out entity has is only in the index.
- **Partners** (users) who state facts about themselves over a session ("I have a dog called
  Brindo.") and ask about them in a later one ("What is my dog called?"). The held-out partners'
  names and values (pet and family names, towns, and a held-out share of the jobs, instruments,
  dishes and colours) never occur in training rows.
- **Chit-chat** about topics (held-out topics are adjective-noun pairs never trained),
  greetings, and **arithmetic** ("What is 37 * 91?") for the code interpreter (held-out operand
  triples).

The user turns made of this world are in agent_turns.py, the modules' training rows in
agent_data.py.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

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

# kind -> (introduction, {attribute: (sentence, questions, query, value set)}). An entity's name is
# invented; each fact's value is a common word from a set (ENTITY_VALUES, disjoint from the
# partners' values and from the questions' words): which value a held-out entity has is
# only in its document, while copying it is one whole BPE token. With invented multi-piece values
# (names, years) this study's 2-layer model learnt every format but copied the value out of the
# passage for 3% of held-out questions, and the study measured that model, not the pipeline.
# Two more rules make the documents readable for a small model: no document holds a query's
# attribute word (the index finds a question's document by its name alone, so the knowledge
# module sees one passage, not four others with the same kind of fact), and in a document the
# word before each value occurs once, and not in the question or the module's instructions.
# fmt: off
ENTITY_VALUES = {
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "months": ("January", "February", "March", "April", "June", "July", "August",  # no "may"
               "September", "October", "November", "December"),
    "crops": ("wheat", "barley", "oats", "rye", "maize", "beans", "peas", "turnips", "cabbages",
              "onions", "leeks", "hops"),
    "fish": ("trout", "salmon", "pike", "carp", "perch", "eels", "herring", "cod", "bream",
             "roach"),
    "trees": ("oak", "pine", "birch", "ash", "elm", "maple", "willow", "cedar", "beech", "alder"),
    "metals": ("iron", "copper", "tin", "gold", "lead", "zinc", "brass", "bronze"),
    "wild": ("deer", "wolves", "bears", "foxes", "eagles", "hares", "lynxes", "boars", "owls",
             "otters"),
    "genres": ("jazz", "folk", "ska", "blues", "reggae", "punk", "soul", "funk", "disco", "opera",
               "swing", "gospel"),
    "devices": ("looms", "kettles", "compasses", "lanterns", "clocks", "pumps", "presses", "locks",
                "stoves", "telescopes", "bellows", "ploughs"),
    "stones": ("granite", "marble", "slate", "sandstone", "limestone", "chalk", "flint",
               "basalt"),
}
KINDS: dict[str, tuple[str, dict[str, tuple[str, tuple[str, ...], str, str]]]] = {
    "town": ("{name} is a small town.", {
        "crop": ("The fields around {name} grow {value}.",
                 ("What do farmers grow around {name}?", "What is the main crop of {name}?"),
                 "{name} crop", "crops"),
        "market": ("{name} holds a fair every {value}.",
                   ("Which day is market day in {name}?", "On which day is the market in {name}?"),
                   "{name} market", "days"),
        "stone": ("Every house in {name} is made from {value}.",
                  ("What are the houses in {name} built with?",
                   "Which stone are the houses of {name} made of?"), "{name} stone", "stones"),
    }),
    "river": ("{name} is a stream.", {
        "fish": ("Anglers catch {value} in the {name}.",
                 ("Which fish live in the {name}?", "What fish swim in the {name}?"),
                 "{name} fish", "fish"),
        "trees": ("{name} winds past {value} woods.",
                  ("What trees grow along the {name}?", "Which trees line the {name}?"),
                  "{name} trees", "trees"),
        "flood": ("{name} overflows its banks each {value}.",
                  ("In which month does the {name} flood?", "When does the {name} flood?"),
                  "{name} flood", "months"),
    }),
    "inventor": ("{name} was an inventor.", {
        "invention": ("{name} is remembered for {value}.",
                      ("What did {name} invent?", "Which invention made {name} famous?"),
                      "{name} invented", "devices"),
        "metal": ("{name} worked mostly with {value}.",
                  ("Which metal did {name} use?", "What metal did {name} like best?"),
                  "{name} metal", "metals"),
        "died": ("{name} passed away one {value}.",
                 ("In which month did {name} die?", "When did {name} die?"), "{name} died",
                 "months"),
    }),
    "mountain": ("{name} is a mountain.", {
        "animals": ("{name} is home to wild {value}.",
                    ("What animals live on {name}?", "Which animals can you see on {name}?"),
                    "{name} animals", "wild"),
        "trees": ("The slopes of {name} carry {value} forests.",
                  ("What trees grow on {name}?", "Which forests cover {name}?"),
                  "{name} trees", "trees"),
        "rock": ("Climbers on {name} find bare {value}.",
                 ("What rock is {name} made of?", "Which stone is {name} made of?"),
                 "{name} rock", "stones"),
    }),
    "band": ("{name} is a band.", {
        "genre": ("{name} mostly plays {value}.",
                  ("What kind of music does {name} play?", "Which genre is {name}?"),
                  "{name} genre", "genres"),
        "formed": ("{name} got together one {value}.",
                   ("In which month was {name} formed?", "When was {name} formed?"),
                   "{name} formed", "months"),
        "practice": ("{name} rehearses every {value}.",
                     ("On which day does {name} practise?", "When does {name} rehearse?"),
                     "{name} practice", "days"),
    }),
}
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


def make_entity(kind: str, names: Names, rng: random.Random) -> Entity:
    name = names.word()
    attributes = KINDS[kind][1]
    chosen = rng.sample(sorted(attributes), rng.randint(1, min(3, len(attributes))))
    facts = []
    for attribute in sorted(chosen, key=list(attributes).index):
        sentence, questions, query, values = attributes[attribute]
        value = rng.choice(ENTITY_VALUES[values])
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


# fmt: off
_STOP = frozenset(("the", "a", "an", "of", "in", "on", "is", "was", "who", "what", "which", "when",
                   "where", "does", "do", "did", "how", "by", "to", "and", "it", "its"))
# fmt: on


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w\w+", text.lower()) if w not in _STOP]


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
