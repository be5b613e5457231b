"""herd/agent/modules.py: each BB3 module's prompt (golden strings: which turns it sees, where the
knowledge goes) and the reading of its answer (well-formed, case variants, extra text, and the
documented fallbacks for empty or malformed answers); every prompt is a dialog a chat tokenizer
encodes."""

from __future__ import annotations

import json

import pytest

from herd.agent.memory import MemoryEntry
from herd.agent.modules import (
    ENTITY_MAX_WORDS,
    KNOWLEDGE_MAX_WORDS,
    NOTE_MAX_WORDS,
    PASSAGE_WORDS,
    PASSAGES,
    QUERY_MAX_WORDS,
    RESPONSE_SYSTEM,
    ModuleTrace,
    build_contextual_knowledge_messages,
    build_memory_decision_messages,
    build_memory_generator_messages,
    build_memory_knowledge_messages,
    build_response_messages,
    build_search_decision_messages,
    build_search_knowledge_messages,
    build_search_query_messages,
    entity_needed,
    note_line,
    parse_contextual_knowledge,
    parse_memory_decision,
    parse_memory_generator,
    parse_memory_knowledge,
    parse_response,
    parse_search_decision,
    parse_search_knowledge,
    parse_search_query,
)
from herd.errors import HerdError
from tests.sums_tokenizer import sums_tokenizer

CONTEXT = [
    {"role": "system", "content": "the agent's own instructions, never shown to a module"},
    {"role": "user", "content": "I love baseball, watching it or playing it."},
    {"role": "assistant", "content": "Me too!\nI am a big fan of the New York Yankees."},
    {"role": "user", "content": "I wonder what their record is this year?"},
]
TRANSCRIPT = (
    "Person 1: I love baseball, watching it or playing it.\n"
    "Person 2: Me too! I am a big fan of the New York Yankees.\n"
    "Person 1: I wonder what their record is this year?\n"
)


def entry(id: int, text: str, speaker: str) -> MemoryEntry:
    return MemoryEntry(id, "alice", text, speaker, 0.0, 0, None, 0, 0, "s")


NOTES = [
    entry(1, "I have a dog named Rex.", "partner"),
    entry(2, "I like chess.", "self"),
    entry(3, "I play baseball on weekends.", "partner"),
]


def user_content(messages: list[dict]) -> str:
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[1]["content"]


# --- decisions: the last turn only -----------------------------------------------------------------


def test_search_decision_sees_only_the_last_user_turn():
    messages = build_search_decision_messages(CONTEXT)
    assert "search" in messages[0]["content"] and "do not search" in messages[0]["content"]
    assert user_content(messages) == (
        "Person 1: I wonder what their record is this year?\nSearch Decision:"
    )
    # the partner's last turn, even when the context already holds the bot's reply
    with_reply = [*CONTEXT, {"role": "assistant", "content": "Let me check."}]
    assert user_content(build_search_decision_messages(with_reply)) == user_content(messages)


@pytest.mark.parametrize(
    "text, do",
    [
        ("search", True),
        ("Search.", True),
        ("SEARCH", True),
        ("Search Decision: search", True),
        ("**search**", True),
        ("search\nbecause the user asks for a record", True),
        ("search - it is a factual question", True),
        ("__do-search__", True),
        ("yes", True),
        ("do not search", False),
        ("Do Not Search.", False),
        ("Don't search", False),
        ("__do-not-search__", False),
        ("no", False),
        ("", False),
        ("maybe later", False),  # unreadable: BB3's fallback, no search
        ("searching is not needed", False),  # not the label itself
    ],
)
def test_parse_search_decision(text, do):
    assert parse_search_decision(text) is do


def test_memory_decision_sees_the_last_turn_and_the_notes():
    messages = build_memory_decision_messages(CONTEXT, NOTES)
    assert user_content(messages) == (
        "Personal Fact: Person 2's Persona: I like chess.\n"
        "Personal Fact: Person 1's Persona: I have a dog named Rex. I play baseball on weekends.\n"
        "Person 1: I wonder what their record is this year?\n"
        "Memory Decision:"
    )
    assert user_content(build_memory_decision_messages(CONTEXT)) == (
        "Person 1: I wonder what their record is this year?\nMemory Decision:"
    )


@pytest.mark.parametrize(
    "text, do",
    [
        ("access memory", True),
        ("Access Memory", True),
        ("Memory Decision: access memory, the user mentions a hobby", True),
        ("__do-access-memory__", True),
        ("do not access memory", False),
        ("__do-not-access-memory__", False),
        ("DON'T ACCESS MEMORY", False),
        ("search", False),
        ("   ", False),
    ],
)
def test_parse_memory_decision(text, do):
    assert parse_memory_decision(text) is do


# --- query and memory generation ----------------------------------------------------------------------


def test_search_query_sees_the_truncated_context():
    assert user_content(build_search_query_messages(CONTEXT)) == TRANSCRIPT + "Query:"
    assert user_content(build_search_query_messages(CONTEXT, max_turns=1)) == (
        "Person 1: I wonder what their record is this year?\nQuery:"
    )


@pytest.mark.parametrize(
    "text, query",
    [
        ("New York Yankees record 2024", "New York Yankees record 2024"),
        ('Query: "yankees record this year".', "yankees record this year"),
        ("`yankees record`\nThis query finds the record.", "yankees record"),
        ("__generate-query__ yankees record", "yankees record"),
        ("  ", None),
        ("None", None),
        ("<|eot_id|>", None),
    ],
)
def test_parse_search_query(text, query):
    assert parse_search_query(text) == query


def test_parse_search_query_caps_the_length():
    assert parse_search_query(" ".join(["word"] * 50)) == " ".join(["word"] * QUERY_MAX_WORDS)


def test_memory_generator_sees_one_turn_of_the_given_speaker():
    partner = build_memory_generator_messages(CONTEXT)
    assert user_content(partner) == "Person 1: I wonder what their record is this year?\nMemory:"
    assert "Person 1" in partner[0]["content"] and "no persona" in partner[0]["content"]
    # the bot's own reply, for a note about itself
    mine = build_memory_generator_messages(CONTEXT, speaker="self")
    assert (
        user_content(mine) == "Person 2: Me too! I am a big fan of the New York Yankees.\nMemory:"
    )
    with pytest.raises(HerdError, match="speaker 'bot'"):
        build_memory_generator_messages(CONTEXT, speaker="bot")
    with pytest.raises(HerdError, match="no assistant turn"):
        build_memory_generator_messages(CONTEXT[:2], speaker="self")


@pytest.mark.parametrize(
    "text, note",
    [
        ("I follow the Yankees.", "I follow the Yankees."),
        ("Memory: I follow the Yankees.", "I follow the Yankees."),
        ("Person 1's Persona: I follow the Yankees.\nPerson 1: hi", "I follow the Yankees."),
        ('"I like baseball"', "I like baseball"),
        ("no persona", None),
        ("No persona.", None),
        ("Memory: no_persona", None),
        ("__NO__PERSONA__BEAM__MIN__LEN__20__", None),
        ("METASEQ RESPONSE FAILED.", None),
        ("None", None),
        ("", None),
        (
            "No personal trainer for me, I work out alone.",
            "No personal trainer for me, I work out alone.",
        ),
    ],
)
def test_parse_memory_generator(text, note):
    assert parse_memory_generator(text) == note


def test_parse_memory_generator_caps_the_length():
    assert len(parse_memory_generator(" ".join(["long"] * 80)).split()) == NOTE_MAX_WORDS


# --- knowledge ---------------------------------------------------------------------------------------


def test_search_knowledge_puts_the_passages_before_the_context():
    passages = [
        {"title": "New York Yankees", "text": "The Yankees are 50-20.\nThey play in the Bronx."},
        "A passage as a plain string.",
        {"title": "", "text": "   "},  # nothing to show
    ]
    assert user_content(build_search_knowledge_messages(CONTEXT, passages)) == (
        "External Knowledge: New York Yankees. The Yankees are 50-20. They play in the Bronx.\n"
        "External Knowledge: A passage as a plain string.\n" + TRANSCRIPT + "Interesting Fact:"
    )


def test_search_knowledge_caps_passages_and_their_length():
    passages = [{"title": f"t{i}", "text": "word " * 500} for i in range(PASSAGES + 3)]
    lines = user_content(build_search_knowledge_messages(CONTEXT, passages)).splitlines()
    shown = [line for line in lines if line.startswith("External Knowledge: ")]
    assert len(shown) == PASSAGES
    assert all(len(line.split()) == 2 + PASSAGE_WORDS for line in shown)


@pytest.mark.parametrize(
    "text, knowledge",
    [
        ("The Yankees are 50-20 this year.", "The Yankees are 50-20 this year."),
        ("Interesting Fact: The Yankees are 50-20.\nPerson 2: wow", "The Yankees are 50-20."),
        ("The Yankees are 50-20. They lead.", "The Yankees are 50-20. They lead."),  # both fit
        ("no knowledge", None),
        ("No knowledge.", None),
        ("", None),
    ],
)
def test_parse_search_knowledge(text, knowledge):
    assert parse_search_knowledge(text) == knowledge


def test_parse_search_knowledge_keeps_whole_sentences_within_the_cap():
    first = "The Yankees are 50-20 this year."
    long = " ".join(["more"] * KNOWLEDGE_MAX_WORDS) + "."
    assert parse_search_knowledge(f"{first} {long}") == first
    one = " ".join(["w"] * (KNOWLEDGE_MAX_WORDS + 10))
    assert parse_search_knowledge(one) == " ".join(["w"] * KNOWLEDGE_MAX_WORDS)


def test_memory_knowledge_lists_the_notes_before_the_context():
    assert user_content(build_memory_knowledge_messages(CONTEXT, NOTES)) == (
        "Person 1's Persona: I have a dog named Rex.\n"
        "Person 2's Persona: I like chess.\n"
        "Person 1's Persona: I play baseball on weekends.\n" + TRANSCRIPT + "Personal Fact:"
    )


@pytest.mark.parametrize(
    "text, note_id",
    [
        ("I play baseball on weekends.", 3),
        ("Personal Fact: Person 1's Persona: I play baseball on weekends.", 3),
        ("i play BASEBALL on weekends", 3),
        ("I play baseball every weekend", 3),  # a close paraphrase: token F1 >= 0.5
        ("Person 2's Persona: I like chess", 2),
        ("Person 2's Persona: I have a dog named Rex.", None),  # not a note about the bot
        ("I enjoy opera.", None),  # no offered note
        ("", None),
    ],
)
def test_parse_memory_knowledge_returns_an_offered_note(text, note_id):
    note = parse_memory_knowledge(text, NOTES)
    assert (note.id if note is not None else None) == note_id
    if note is not None:
        assert note in NOTES


def test_contextual_knowledge_sees_the_context():
    assert user_content(build_contextual_knowledge_messages(CONTEXT)) == (
        TRANSCRIPT + "Previous Topic:"
    )


@pytest.mark.parametrize(
    "text, entity",
    [
        ("baseball", "baseball"),
        ("Previous Topic: New York Yankees.", "New York Yankees"),
        ('"BASEBALL"', "BASEBALL"),
        ("football", None),  # never mentioned: not a previous topic
        ("base", None),  # only part of a word
        ("the", None),  # stop words only
        ("None", None),
        ("I love baseball, watching it or playing it", None),  # a sentence, not a noun phrase
        ("", None),
    ],
)
def test_parse_contextual_knowledge(text, entity):
    assert parse_contextual_knowledge(text, CONTEXT) == entity


def test_parse_contextual_knowledge_looks_only_at_the_turns_shown():
    assert parse_contextual_knowledge("baseball", CONTEXT, max_turns=1) is None
    assert parse_contextual_knowledge("their record", CONTEXT, max_turns=1) == "their record"
    too_long = " ".join(["baseball"] * (ENTITY_MAX_WORDS + 1))
    assert parse_contextual_knowledge(too_long, [{"role": "user", "content": too_long}]) is None


def test_entity_only_without_search_or_memory_knowledge():
    assert entity_needed(searched=False, recalled=False)
    assert not entity_needed(searched=True, recalled=False)
    assert not entity_needed(searched=False, recalled=True)
    assert not entity_needed(searched=True, recalled=True)


# --- the response ----------------------------------------------------------------------------------


def test_response_without_knowledge_is_the_chat_itself():
    messages = build_response_messages(CONTEXT)
    assert messages == [
        {"role": "system", "content": RESPONSE_SYSTEM},
        {"role": "user", "content": "I love baseball, watching it or playing it."},
        # chat turns keep their own lines (a reply may hold code)
        {"role": "assistant", "content": "Me too!\nI am a big fan of the New York Yankees."},
        {"role": "user", "content": "I wonder what their record is this year?"},
    ]


def test_response_puts_all_knowledge_after_the_last_user_turn_in_bb3_order():
    messages = build_response_messages(
        CONTEXT,
        search_knowledge="The Yankees are 50-20.",
        memory_note=NOTES[2],
        entity="baseball",
    )
    assert messages[-1] == {
        "role": "user",
        "content": "I wonder what their record is this year?\n\n"
        "Knowledge for your reply:\n"
        "Previous Topic: baseball\n"
        "Personal Fact: Person 1's Persona: I play baseball on weekends.\n"
        "Interesting Fact: The Yankees are 50-20.",
    }
    assert messages[0]["content"].startswith(RESPONSE_SYSTEM + " The user's last message ends")
    assert messages[1:3] == build_response_messages(CONTEXT)[1:3]  # earlier turns untouched
    assert CONTEXT[-1]["content"] == "I wonder what their record is this year?"  # not mutated
    only_search = build_response_messages(CONTEXT, search_knowledge="The Yankees are 50-20.")
    assert only_search[-1]["content"].endswith(
        "?\n\nKnowledge for your reply:\nInteresting Fact: The Yankees are 50-20."
    )


def test_response_keeps_the_latest_turns_and_needs_a_user_turn_last():
    assert build_response_messages(CONTEXT, max_turns=1)[1:] == [CONTEXT[-1]]
    with pytest.raises(HerdError, match="ends with a user turn"):
        build_response_messages([*CONTEXT, {"role": "assistant", "content": "Hm."}])
    with pytest.raises(HerdError, match="message 1 is not a user or assistant"):
        build_response_messages([CONTEXT[1], {"role": "tool", "content": "{}"}])


@pytest.mark.parametrize(
    "text, reply",
    [
        ("They are 50-20 this year!", "They are 50-20 this year!"),
        ("Person 2: They are 50-20.", "They are 50-20."),
        ("They are 50-20.\nPerson 1: Wow!\nPerson 2: Yes.", "They are 50-20."),
        ("They are 50-20.<|eot_id|>", "They are 50-20."),
        ("First line.\nSecond line.", "First line.\nSecond line."),
        ("", ""),
    ],
)
def test_parse_response(text, reply):
    assert parse_response(text) == reply


# --- all modules --------------------------------------------------------------------------------------


def all_prompts() -> dict[str, list[dict]]:
    passages = [{"title": "Yankees", "text": "The Yankees are 50-20."}]
    return {
        "search_decision": build_search_decision_messages(CONTEXT),
        "memory_decision": build_memory_decision_messages(CONTEXT, NOTES),
        "search_query": build_search_query_messages(CONTEXT),
        "memory_generator_partner": build_memory_generator_messages(CONTEXT),
        "memory_generator_self": build_memory_generator_messages(CONTEXT, "self"),
        "search_knowledge": build_search_knowledge_messages(CONTEXT, passages),
        "memory_knowledge": build_memory_knowledge_messages(CONTEXT, NOTES),
        "contextual_knowledge": build_contextual_knowledge_messages(CONTEXT),
        "response": build_response_messages(CONTEXT, search_knowledge="50-20", entity="baseball"),
    }


def test_every_prompt_is_a_dialog_the_chat_tokenizer_encodes(tmp_path):
    tok = sums_tokenizer(tmp_path)
    assert tok.chat_format == "llama3"
    header = tok.special_tokens["<|start_header_id|>"]
    for name, messages in all_prompts().items():
        ids, mask = tok.encode_dialog(messages)
        assert ids[0] == tok.bos_id, name
        assert ids.count(header) == len(messages) + 1, name  # + the assistant's header
        # a module's prompt has no assistant text; the response's holds the bot's earlier turn
        assert any(mask) == any(m["role"] == "assistant" for m in messages), name
        text = tok.decode(ids)
        assert all(m["content"] in text for m in messages), name


def test_the_agent_context_is_checked():
    with pytest.raises(HerdError, match="no user turn"):
        build_search_decision_messages([])
    with pytest.raises(HerdError, match="message 0 is not a user or assistant text turn"):
        build_search_query_messages([{"role": "user", "content": None}])
    with pytest.raises(HerdError, match="speaker 'bot'"):
        note_line(entry(9, "x", "bot"))


def test_module_trace_is_plain_json():
    messages = build_memory_knowledge_messages(CONTEXT, NOTES)
    trace = ModuleTrace("memory_knowledge", messages, "I like chess.", NOTES[1], 0.25)
    data = json.loads(json.dumps(trace.to_dict()))
    assert data["module"] == "memory_knowledge" and data["messages"] == messages
    assert data["parsed"]["id"] == 2 and data["parsed"]["text"] == "I like chess."
    assert data["seconds"] == 0.25 and data["output"] == "I like chess."
    decision = ModuleTrace("search_decision", [], "search", True, 0.01).to_dict()
    assert decision["parsed"] is True
