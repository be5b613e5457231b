"""BlenderBot 3's modules as prompts for one chat model: what each module is shown, and how its
answer is read back. Pure text in, text out; the agent's loop calls these around its model.

BB3 (Shuster et al. 2022, arXiv 2208.03188; ParlAI projects/bb3) runs one model under a different
prompt per module (projects/bb3/agents/module.py). A turn goes: decide whether to search and
whether to recall (`search_decision`, `memory_decision`) -> write a query and a note about the
partner (`search_query`, `memory_generator`) -> turn the fetched passages, the recalled notes or
the conversation itself into one piece of knowledge (`search_knowledge`, `memory_knowledge`,
`contextual_knowledge`: an entity to come back to) -> reply (`response`) -> write a note about the
bot from its own reply (`memory_generator` again, speaker "self"). What each module sees follows
BB3 (`Module.is_one_turn_history`, the README of projects/bb3/agents): the decisions and the memory
generator see only the last turn, the memory decision also the notes; the query, the knowledge
modules and the response see the whole context, truncated to its latest turns. The reply is
conditioned on all the knowledge the turn produced; the entity is sought only when there is neither
search nor memory knowledge (`entity_needed`).

Rendering. The modules that answer a question *about* the conversation get it as a transcript in
one user message, BB3's OPT layout: "Person 1:" is the user, "Person 2:" the bot, notes are
"Person 1's Persona: ..." and the message ends with the module's label ("Search Decision:"), so a
chat model reads the dialogue as data instead of continuing it. The response is the next assistant
turn itself, so it gets the dialogue as chat turns (the style and stop token the model was tuned
for) and the knowledge goes where BB3 puts it, after the context and just before the reply: at the
end of the last user message, since a system message there is invalid in Llama 2's format and
unseen in Llama 3's training. Every prompt is a valid dialog for `tok.encode_dialog`.

Parsing is lenient and never fails on the model's text: echoed labels and quotes are stripped, the
first line is kept, and an answer that cannot be read falls back to "no" / None, per parser.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

# The store's own normalisation (lowercase words), so "no persona" reads the same here and there.
from herd.agent.memory import NO_PERSONA_NOTES, normalise_tokens, squash_text, token_f1
from herd.errors import HerdError

# BB3's module names (Module.message_name()), which the traces use too.
# fmt: off
MODULES = ("search_decision", "memory_decision", "search_query", "memory_generator",
           "search_knowledge", "memory_knowledge", "contextual_knowledge", "response")
# fmt: on
# BB3's speaker labels and output vocabulary (projects/bb3/prompts.py, constants.py): the OPT words
# are what we ask for; the R2C2 3B control tokens are read too, for models tuned on BB3's tasks.
PARTNER, SELF = "Person 1", "Person 2"
PERSONA = {"partner": f"{PARTNER}'s Persona", "self": f"{SELF}'s Persona"}
SEARCH, NO_SEARCH = "search", "do not search"
ACCESS_MEMORY, NO_ACCESS_MEMORY = "access memory", "do not access memory"
NO_KNOWLEDGE = "no knowledge"  # herd's own way out for the knowledge modules; BB3 has none
# Knowledge labels in the response prompt, in BB3's order (Module.knowledge_modules()).
ENTITY_LABEL, MEMORY_LABEL, SEARCH_LABEL = "Previous Topic", "Personal Fact", "Interesting Fact"
PASSAGE_LABEL = "External Knowledge"
KNOWLEDGE_HEADING = "Knowledge for your reply:"
RESPONSE_SYSTEM = "You are a friendly, curious conversation partner. Reply in a few sentences."

CONTEXT_TURNS = 16  # the agent lowers it until the encoded prompt fits, as BB3 dropped old turns
PASSAGES, PASSAGE_WORDS = 5, 100  # BB3: n_docs 5, knowledge_chunk_size 100 words
# Caps on parsed outputs, near BB3's generation limits (opt_presets.py: 32 tokens for the query,
# the note and the entity, 64 for search knowledge) counted in words.
QUERY_MAX_WORDS, NOTE_MAX_WORDS, KNOWLEDGE_MAX_WORDS, ENTITY_MAX_WORDS = 20, 30, 50, 6
MEMORY_MATCH_F1 = 0.5  # a recalled note paraphrased this closely still counts as that note

_SPECIAL = re.compile(r"<\|[a-z_0-9]+\|>")  # Llama chat tokens left in decoded text
_BB3_TOKEN = re.compile(r"__[a-z]+(?:[-_][a-z0-9]+)*__", re.IGNORECASE)  # __generate-query__ ...
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_QUOTES = "\"'`*“”‘’ "
_NOTHING = frozenset({"none", "nothing", "n a", "no", "null"})


class Note(Protocol):
    """A memory note: herd.agent.memory.MemoryEntry, or anything with its text and speaker."""

    text: str
    speaker: str  # "partner" or "self"


N = TypeVar("N", bound=Note)


@dataclasses.dataclass
class ModuleTrace:
    """One module call of a turn, for `--trace` and the turn's stored JSON trace."""

    module: str  # one of MODULES; "memory_generator_self" / "_partner" tell the two notes apart
    messages: list[dict]
    output: str  # the model's text as generated
    parsed: Any  # what the module's parser made of it
    seconds: float

    def to_dict(self) -> dict:
        """Plain data for JSON (a parsed MemoryEntry becomes a dict)."""
        return dataclasses.asdict(self)


def _turns(context: Sequence[dict], flatten: bool = True) -> list[tuple[str, str]]:
    """(role, text) of the non-empty user and assistant turns; system messages are the agent's
    own and skipped. `flatten` joins a turn's lines, so that a "Person N:" line is one turn."""
    turns = []
    for i, m in enumerate(context):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "system":
            continue
        if role not in ("user", "assistant") or not isinstance(m.get("content"), str):
            raise HerdError(f"agent context: message {i} is not a user or assistant text turn")
        text = " ".join(m["content"].split()) if flatten else m["content"]
        if text.strip():
            turns.append((role, text))
    return turns


def _transcript(context: Sequence[dict], max_turns: int) -> list[str]:
    turns = _turns(context)[-max(1, max_turns) :]
    return [f"{PARTNER if role == 'user' else SELF}: {text}" for role, text in turns]


def _last(context: Sequence[dict], role: str = "user") -> str:
    for r, text in reversed(_turns(context)):
        if r == role:
            return text
    raise HerdError(f"agent context: no {role} turn to read")


def note_line(note: Note) -> str:
    """A note as BB3 writes it into prompts: "Person 1's Persona: I have two dogs."."""
    if note.speaker not in PERSONA:
        raise HerdError(f"memory note speaker {note.speaker!r} is not 'partner' or 'self'")
    return f"{PERSONA[note.speaker]}: {note.text}"


def _messages(task: str, lines: list[str], label: str) -> list[dict]:
    return [
        {"role": "system", "content": task},
        {"role": "user", "content": "\n".join([*lines, f"{label}:"])},
    ]


def _first_line(text: str, labels: Sequence[str]) -> str:
    """The first non-empty line without Llama special tokens, echoed labels ("Query:", also
    repeated or in bold) and surrounding quotes."""
    text = _SPECIAL.sub("\n", text or "")
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    names = "|".join(re.escape(label) for label in (*labels, SELF, "Answer", "Assistant"))
    label = re.compile(rf"^[*\s]*(?:{names})[*\s]*:[*\s]*", re.IGNORECASE)
    while m := label.match(line):
        line = line[m.end() :]
    return line.strip(_QUOTES)


def _starts(said: str, phrases: Sequence[str]) -> bool:
    return any(said == p or said.startswith(p + " ") for p in phrases)


def _decision(text: str, label: str, do: tuple[str, ...], dont: tuple[str, ...]) -> bool:
    # The negative answers contain the positive ones ("do not search"), so they are tried first;
    # anything else is "no", BB3's own fallback (r2c2_bb3_agent.py batch_act_decision).
    said = squash_text(_first_line(text, [label]))
    return not _starts(said, dont) and _starts(said, do)


def _cap_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


# --- the modules -----------------------------------------------------------------------------------


def build_search_decision_messages(context: Sequence[dict]) -> list[dict]:
    """Search decision: the user's last turn only."""
    task = (
        "You decide whether Person 2 needs an internet search before answering Person 1. "
        f"Answer '{SEARCH}' when a good reply needs facts to look up (names, dates, figures, news, "
        f"how-tos), and '{NO_SEARCH}' for chit-chat, feelings and opinions."
    )
    return _messages(task, [f"{PARTNER}: {_last(context)}"], "Search Decision")


def parse_search_decision(text: str) -> bool:
    """True for "search" ("__do-search__", "yes", any case, extra words after); False for "do not
    search", "no", and anything unreadable."""
    dont = (NO_SEARCH, "don t search", "dont search", "no")
    return _decision(text, "Search Decision", (SEARCH, "do search", "yes"), dont)


def build_memory_decision_messages(
    context: Sequence[dict], notes: Sequence[Note] = ()
) -> list[dict]:
    """Memory decision: the user's last turn and the notes, each speaker's joined on one line (BB3's
    memory_decision_use_memories, on by default, showed the model every note it had)."""
    task = (
        "You decide whether Person 2 should look at its notes about Person 1 and itself before "
        f"answering. Answer '{ACCESS_MEMORY}' when Person 1's message touches their life, "
        f"tastes or plans, or Person 2's, and '{NO_ACCESS_MEMORY}' otherwise."
    )
    lines = []
    for speaker in ("self", "partner"):
        texts = [n.text.strip() for n in notes if n.speaker == speaker and n.text.strip()]
        if texts:
            lines.append(f"{MEMORY_LABEL}: {PERSONA[speaker]}: {' '.join(texts)}")
    return _messages(task, [*lines, f"{PARTNER}: {_last(context)}"], "Memory Decision")


def parse_memory_decision(text: str) -> bool:
    """True for "access memory" ("__do-access-memory__", "yes"); False for "do not access memory",
    "no", and anything unreadable."""
    do = (ACCESS_MEMORY, "do access memory", "yes")
    dont = (NO_ACCESS_MEMORY, "don t access memory", "dont access memory", "no")
    return _decision(text, "Memory Decision", do, dont)


def build_search_query_messages(
    context: Sequence[dict], max_turns: int = CONTEXT_TURNS
) -> list[dict]:
    """Query generation: the context."""
    task = (
        "Write the search engine query that finds what Person 2 needs to know to answer Person 1's "
        "last message well. Reply with the query alone: a few keywords, no quotes."
    )
    return _messages(task, _transcript(context, max_turns), "Query")


def parse_search_query(text: str) -> str | None:
    """The query: first line, labels, quotes, BB3 tokens and a final full stop removed, at most
    QUERY_MAX_WORDS words; None when nothing is left or the model said "none"."""
    query = _BB3_TOKEN.sub(" ", _first_line(text, ["Query", "Search query", "Search"]))
    query = _cap_words(query, QUERY_MAX_WORDS).rstrip(".").strip(_QUOTES)
    return None if not squash_text(query) or squash_text(query) in _NOTHING else query


def build_memory_generator_messages(
    context: Sequence[dict], speaker: str = "partner"
) -> list[dict]:
    """Memory generation: one turn only, the user's last (speaker "partner") or, after the reply,
    the bot's own last (speaker "self"; BB3 sends its reply through the same module)."""
    if speaker not in PERSONA:
        raise HerdError(f"memory note speaker {speaker!r} is not 'partner' or 'self'")
    who = PARTNER if speaker == "partner" else SELF
    task = (
        f"Write down what this message reveals about {who} that is worth remembering in later "
        f"chats (facts, tastes, plans), as a short note in {who}'s own words, like 'I have two "
        f"dogs.'. If it reveals nothing lasting, answer '{NO_PERSONA_NOTES[1]}'."
    )
    role = "user" if speaker == "partner" else "assistant"
    return _messages(task, [f"{who}: {_last(context, role)}"], "Memory")


def parse_memory_generator(text: str) -> str | None:
    """The note (first line, labels and a "Person N's Persona:" prefix removed, at most
    NOTE_MAX_WORDS words), or None for an empty answer, a "no persona" answer in any of the forms
    herd.agent.memory.NO_PERSONA_NOTES rejects, or "none"/"nothing"."""
    labels = ["Memory", "Note", *PERSONA.values(), "your persona", "partner's persona"]
    raw = _first_line(text, labels)
    if _starts(squash_text(raw), [squash_text(n) for n in NO_PERSONA_NOTES]):
        return None
    note = _cap_words(_BB3_TOKEN.sub(" ", raw), NOTE_MAX_WORDS).strip(_QUOTES)
    return None if not squash_text(note) or squash_text(note) in _NOTHING else note


def build_search_knowledge_messages(
    context: Sequence[dict], passages: Sequence[dict | str], max_turns: int = CONTEXT_TURNS
) -> list[dict]:
    """Knowledge from search: the first PASSAGES passages (search results {"title", "text"} or
    strings), each cut to PASSAGE_WORDS words, before the context as in BB3."""
    task = (
        "Below are search results and a conversation. Give the one fact from the results that "
        "best helps Person 2 answer Person 1's last message, as a single sentence. If no result "
        f"helps, answer '{NO_KNOWLEDGE}'."
    )
    lines = []
    for p in list(passages)[:PASSAGES]:
        text = p if isinstance(p, str) else p.get("text", "")
        title = "" if isinstance(p, str) else (p.get("title") or "").strip()
        text = _cap_words(f"{title}. {text}" if title else text, PASSAGE_WORDS)
        if text:
            lines.append(f"{PASSAGE_LABEL}: {text}")
    return _messages(task, [*lines, *_transcript(context, max_turns)], SEARCH_LABEL)


def parse_search_knowledge(text: str) -> str | None:
    """The knowledge: the first line's whole sentences within KNOWLEDGE_MAX_WORDS words (the first
    sentence cut there if it alone is longer); None when empty or "no knowledge"/"none"."""
    line = _BB3_TOKEN.sub(" ", _first_line(text, [SEARCH_LABEL, "Knowledge", "Fact"])).strip()
    if not squash_text(line) or squash_text(line) in _NOTHING | {NO_KNOWLEDGE}:
        return None
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(line):
        if kept and len(" ".join([*kept, sentence]).split()) > KNOWLEDGE_MAX_WORDS:
            break
        kept.append(sentence)
    return _cap_words(" ".join(kept), KNOWLEDGE_MAX_WORDS)


def build_memory_knowledge_messages(
    context: Sequence[dict], notes: Sequence[Note], max_turns: int = CONTEXT_TURNS
) -> list[dict]:
    """Knowledge from memory: the retrieved notes, one per line, before the context as in BB3."""
    task = (
        "Below are notes about Person 1 and Person 2, then their conversation. Copy the one note "
        "that Person 2 could best use in the next reply, exactly as written."
    )
    lines = [note_line(n) for n in notes]
    return _messages(task, [*lines, *_transcript(context, max_turns)], MEMORY_LABEL)


def parse_memory_knowledge(text: str, notes: Sequence[N]) -> N | None:
    """The note the answer names: BB3 kept the answer only when it is one of the offered notes
    (opt_bb3_agent.py batch_act_knowledge), so usage counters refer to stored notes. Here a note
    matches when equal ignoring case and punctuation, else the closest with token F1 >=
    MEMORY_MATCH_F1 (first on ties); a "Person N's Persona:" prefix narrows it to that speaker."""
    line = _first_line(text, [MEMORY_LABEL])
    candidates = list(notes)
    for speaker, prefix in PERSONA.items():
        if line.lower().startswith(prefix.lower() + ":"):
            line = line[len(prefix) + 1 :].strip(_QUOTES)
            candidates = [n for n in notes if n.speaker == speaker]
    said = squash_text(line).split()
    if not said:
        return None
    for n in candidates:
        if squash_text(n.text).split() == said:
            return n
    scored = [(token_f1(squash_text(n.text).split(), said), i) for i, n in enumerate(candidates)]
    best = max(scored, key=lambda s: (s[0], -s[1]), default=(0.0, -1))
    return candidates[best[1]] if best[0] >= MEMORY_MATCH_F1 else None


def build_contextual_knowledge_messages(
    context: Sequence[dict], max_turns: int = CONTEXT_TURNS
) -> list[dict]:
    """Contextual knowledge (an entity): the context."""
    task = (
        "Pick a topic mentioned earlier in this conversation that Person 2 could bring up again "
        "in the next reply. Answer with a short noun phrase copied from the conversation."
    )
    return _messages(task, _transcript(context, max_turns), ENTITY_LABEL)


def parse_contextual_knowledge(
    text: str, context: Sequence[dict], max_turns: int = CONTEXT_TURNS
) -> str | None:
    """The entity: the first line without labels, quotes and end punctuation, if it has at most
    ENTITY_MAX_WORDS words and occurs (ignoring case and punctuation) in the turns the prompt
    showed and is more than stop words; else None: an entity the conversation never mentioned is
    no "previous topic"."""
    entity = _first_line(text, [ENTITY_LABEL, "Topic", "Entity"]).rstrip(".!?,;:").strip(_QUOTES)
    said = squash_text(entity)
    if len(said.split()) > ENTITY_MAX_WORDS or not normalise_tokens(said, drop_pronouns=True):
        return None
    seen = " ".join(squash_text(t) for _, t in _turns(context)[-max(1, max_turns) :])
    return entity if f" {said} " in f" {seen} " else None


def entity_needed(searched: bool, recalled: bool) -> bool:
    """Whether to run the contextual knowledge module: BB3's default ("compute") runs it only when
    the turn has neither search knowledge (search decided and passages found; the OPT agent falls
    back to the entity when a search finds nothing) nor memory (decided, with notes available)."""
    return not (searched or recalled)


def build_response_messages(
    context: Sequence[dict],
    *,
    search_knowledge: str | None = None,
    memory_note: Note | None = None,
    entity: str | None = None,
    max_turns: int = CONTEXT_TURNS,
    system: str = RESPONSE_SYSTEM,
) -> list[dict]:
    """The reply: the context as chat turns, ending with the user's. BB3 conditions the reply on
    every piece of knowledge the turn produced (knowledge_conditioning "combined", its default),
    one per line in the order entity, memory, search, after the context; with none it is BB3's
    vanilla response. Here those lines end the last user message, set off under a heading."""
    turns = _turns(context, flatten=False)[-max(1, max_turns) :]
    if not turns or turns[-1][0] != "user":
        raise HerdError("agent context: the reply needs a context that ends with a user turn")
    note = note_line(memory_note) if memory_note is not None else None
    pieces = [(ENTITY_LABEL, entity), (MEMORY_LABEL, note), (SEARCH_LABEL, search_knowledge)]
    knowledge = [f"{label}: {value}" for label, value in pieces if value]
    task = system
    if knowledge:
        task += (
            " The user's last message ends with knowledge for your reply that the system added "
            f"(the user did not write it; {PARTNER} is the user, {SELF} is you). Use it where it "
            "fits, naturally, without saying that it was given to you."
        )
    messages = [{"role": "system", "content": task}]
    messages += [{"role": r, "content": t} for r, t in turns]
    if knowledge:
        messages[-1]["content"] += "\n\n" + "\n".join([KNOWLEDGE_HEADING, *knowledge])
    return messages


def parse_response(text: str) -> str:
    """The reply: Llama special tokens and a leading "Person 2:" removed, cut before any line in
    which the model goes on to write the user's next turn ("Person 1: ..."); may be empty."""
    text = _SPECIAL.sub("\n", text or "").strip()
    text = re.sub(rf"^(?:{SELF}|Assistant)\s*:\s*", "", text, flags=re.IGNORECASE)
    cut = re.search(rf"^\s*(?:{PARTNER}|{SELF}|User)\s*:", text, flags=re.IGNORECASE | re.M)
    return (text[: cut.start()] if cut else text).strip()
