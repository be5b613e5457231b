"""herd/agent/memory.py: BB3's memory rules (rejection, dedup, decay counters, blocking, the cap of
32 and its ranker, checked against bm25s run directly) on a SQLite file that survives reopening,
keeps users apart, runs in WAL mode and takes writes from several threads."""

from __future__ import annotations

import io
import json
import sqlite3
import threading

import bm25s
import pytest
from bm25s.stopwords import STOPWORDS_EN_PLUS

from herd.agent.memory import (
    MEMORY_CAP,
    SCHEMA_VERSION,
    MemoryStore,
    normalise_tokens,
)
from herd.errors import HerdError


@pytest.fixture
def store(tmp_path):
    with MemoryStore(tmp_path / "memory.sqlite", user="alice") as s:
        yield s


def test_normalise_tokens_follows_bb3_tokenizer():
    # contractions expanded, BB3's short stop list dropped, pronouns kept, plural "s" folded
    assert normalise_tokens("I've really got two Dogs!") == ["i", "have", "got", "two", "dog"]
    assert normalise_tokens("I don't like cats") == ["i", "do", "not", "like", "cat"]
    # retrieval also drops pronouns and nltk's English stop words
    assert normalise_tokens("I don't like cats", drop_pronouns=True) == ["like", "cat"]


@pytest.mark.parametrize(
    "note",
    [
        "",
        "   \n",
        "...",
        "no persona",
        "No Persona.",
        "NO_PERSONA",
        "__NO__PERSONA__BEAM__MIN__LEN__20__",
        "__no__persona__beam__min__len__20__",
        "METASEQ RESPONSE FAILED.",
        "the a is",  # only stop words: an empty token set would count as a subset of every note
    ],
)
def test_empty_and_no_persona_notes_are_rejected(store, note):
    assert store.add(note, "partner", turn=0) is None
    assert len(store) == 0


def test_exact_and_case_punctuation_duplicates_are_rejected(store):
    first = store.add("I have a dog named Rex.", "partner", turn=0)
    assert first is not None
    assert store.add("I have a dog named Rex.", "partner", turn=1) is None
    assert store.add("  i HAVE a dog, named rex!! ", "partner", turn=1) is None
    assert store.add("I have dogs named Rex", "partner", turn=1) is None  # plural folded
    assert f"near-duplicate of memory {first}" in store.why_rejected(
        "I have a dog named Rex", "partner"
    )
    # BB3 dedups per person: the same fact about the bot itself is a new memory
    assert store.add("I have a dog named Rex.", "self", turn=1) is not None
    assert len(store) == 2


def test_near_duplicate_threshold_boundary(tmp_path):
    """Near-duplicate (BB3's no_overlap): fewer than `dedup_min_unshared` of the earlier note's
    tokens missing from the new one. Tokens of "I have a black dog": {i, have, black, dog}."""
    with MemoryStore(tmp_path / "m1.sqlite") as bb3:  # BB3's threshold, 1
        bb3.add("I have a black dog", "partner")
        # 0 unshared: the new note holds every earlier token, even with more of its own
        assert bb3.add("I have a black dog and a cat", "partner") is None
        # 1 unshared ("black"): kept
        assert bb3.add("I have a brown dog", "partner") is not None
        # the reverse (a subset of an earlier note) is kept too: "and", "cat" are unshared
        assert bb3.add("I have a brown", "partner") is not None
    with MemoryStore(tmp_path / "m2.sqlite", dedup_min_unshared=2) as strict:
        strict.add("I have a black dog", "partner")
        assert strict.add("I have a brown dog", "partner") is None  # 1 unshared < 2
        assert strict.add("I have a brown cat", "partner") is not None  # 2 unshared


def test_decay_counters_over_turns(store, tmp_path):
    a = store.add("I love hiking in the mountains", "partner", turn=0)
    b = store.add("I work as a nurse", "partner", turn=0)
    with MemoryStore(store.path, user="bob") as bob:
        c = bob.add("I love hiking in the mountains", "partner", turn=0)
    for _ in range(3):
        store.advance_turn()
    counters = {e.id: e.turns_since_used for e in store.list_entries()}
    assert counters == {a: 3, b: 3, c: 0}  # bob's notes do not age with alice's turns
    store.mark_used([a], turn=3)
    store.advance_turn()
    entries = {e.id: e for e in store.list_entries("alice")}
    assert (entries[a].turns_since_used, entries[a].uses, entries[a].last_used_turn) == (1, 1, 3)
    assert (entries[b].turns_since_used, entries[b].uses, entries[b].last_used_turn) == (4, 0, None)
    # an unknown id (or another user's) fails as a whole: a's counter is not reset
    with pytest.raises(HerdError, match=f"no memory {c} for user 'alice'"):
        store.mark_used([a, c], turn=4)
    assert {e.id: e.turns_since_used for e in store.list_entries("alice")}[a] == 1


def test_recently_used_entries_are_blocked(store):
    used = store.add("I play tennis every weekend", "partner", turn=0)
    fresh = store.add("My sister plays tennis", "partner", turn=0)
    store.mark_used([used], turn=0)

    def ids(block):
        return [m.entry.id for m in store.retrieve("do you like tennis?", block_recent=block)]

    assert sorted(ids(0)) == [used, fresh]
    assert ids(2) == [fresh]  # used 0 turns ago; a never-used note is not blocked
    store.advance_turn()
    assert ids(2) == [fresh]  # used 1 turn ago
    store.advance_turn()
    assert sorted(ids(2)) == [used, fresh]  # 2 turns ago: free again


def test_retrieval_needs_overlap_and_orders_by_score(store):
    dog = store.add("I have a dog named Rex", "partner")
    walk = store.add("I walk my dog in the park every day", "partner")
    store.add("I work as a nurse", "partner")
    got = store.retrieve("Where do you walk your dog?")
    assert [m.entry.id for m in got] == [walk, dog]
    assert got[0].score > got[1].score > 0
    assert store.retrieve("I am what I am") == []  # only stop words: nothing to match
    assert [m.entry.id for m in store.retrieve("walk your dog", min_overlap=0.5)] == [walk]
    assert store.retrieve("walk your dog", skip_this_session=True) == []


def _reference_top(texts: dict[int, str], query: str, k: int) -> list[tuple[int, float]]:
    """bm25s on its own: its tokenizer with the same stop words (the texts have no pronouns,
    contractions, one-letter words or plurals, where herd's normaliser would differ)."""
    stop = [*STOPWORDS_EN_PLUS, "really", "actually", "also", "very", "most"]
    ids = list(texts)
    retriever = bm25s.BM25()
    corpus = bm25s.tokenize([texts[i] for i in ids], stopwords=stop, show_progress=False)
    retriever.index(corpus, show_progress=False)
    docs, scores = retriever.retrieve(
        bm25s.tokenize([query], stopwords=stop, show_progress=False), k=k, show_progress=False
    )
    return [(ids[d], float(s)) for d, s in zip(docs[0], scores[0], strict=True)]


def test_beyond_the_cap_bm25_picks_the_top_entries(store):
    words = ["hiking", "mountain", "trail", "camping", "weekend"]
    texts = {}
    for i in range(45):
        # 1-5 query words and i + 1 words of its own: a length per note, so no ties in BM25, and
        # no note holds every token of an earlier one (so none is a near-duplicate)
        chosen = [w for j, w in enumerate(words) if (i >> j) & 1 or j == i % 5]
        text = " ".join(chosen + [f"zq{i}w{j}" for j in range(i + 1)])
        entry_id = store.add(text, "partner", turn=0)
        assert entry_id is not None
        texts[entry_id] = text
    store.add("I work night shifts at the hospital", "partner")  # no overlap: not a candidate
    query = "Any good hiking trail near the mountain for a camping weekend?"

    got = store.retrieve(query)
    assert len(got) == MEMORY_CAP < len(texts)
    reference = _reference_top(texts, query, k=MEMORY_CAP)
    assert [m.entry.id for m in got] == [i for i, _ in reference]
    assert [m.score for m in got] == pytest.approx([s for _, s in reference], rel=1e-5)
    # a smaller k is the head of the same ranking
    assert [m.entry.id for m in store.retrieve(query, k=5)] == [i for i, _ in reference[:5]]


def test_users_are_isolated(tmp_path):
    path = tmp_path / "memory.sqlite"
    with MemoryStore(path, user="alice") as alice, MemoryStore(path, user="bob") as bob:
        a = alice.add("I love jazz music", "partner")
        b = bob.add("I love jazz music", "partner")  # not a duplicate: another user's note
        assert a is not None and b is not None
        assert [m.entry.id for m in alice.retrieve("jazz")] == [a]
        assert [m.entry.id for m in bob.retrieve("jazz")] == [b]
        assert alice.counts() == {"alice": 1, "bob": 1}
        assert [e.id for e in alice.list_entries()] == [a, b]
        assert [e.id for e in alice.list_entries("bob")] == [b]
        assert (len(alice), len(bob)) == (1, 1)


def test_entries_survive_closing_and_reopening(tmp_path):
    path = tmp_path / "memory.sqlite"
    with MemoryStore(path, user="alice") as s:
        a = s.add("I grew up in Lisbon", "partner", turn=2)
        s.add("I enjoy cooking", "self", turn=2)
        s.advance_turn()
        s.mark_used([a], turn=3)
        before = s.list_entries()
    with MemoryStore(path, user="alice") as s:  # a restart
        assert s.list_entries() == before
        assert s.add("i grew up in lisbon", "partner", turn=4) is None  # dedup sees old notes
        assert [m.entry.id for m in s.retrieve("Lisbon")] == [a]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_delete_entries_and_ids_are_not_reused(store):
    a = store.add("I like tea", "partner")
    b = store.add("I like chess", "partner")
    assert store.delete_entries([b, 999, b]) == [b]
    c = store.add("I like chess", "partner")  # no longer a duplicate
    assert c > b  # AUTOINCREMENT: traces that named b never point at c
    assert [e.id for e in store.list_entries()] == [a, c]


def test_export_round_trip(store, tmp_path):
    store.add("I have two cats", "partner", turn=1)
    store.add("I am a chatbot who likes books", "self", turn=1)
    with MemoryStore(store.path, user="bob") as bob:
        bob.add("I live in Oslo", "partner")
    entries = [e.to_dict() for e in store.list_entries()]

    assert store.export_entries(tmp_path / "out" / "all.jsonl") == 3
    lines = (tmp_path / "out" / "all.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == entries

    stream = io.StringIO()
    assert store.export_entries(stream, format="json", user="bob") == 1
    assert json.loads(stream.getvalue()) == [e for e in entries if e["user"] == "bob"]
    with pytest.raises(HerdError, match="'csv' is unknown"):
        store.export_entries(stream, format="csv")


def test_concurrent_writes_from_threads(tmp_path):
    path = tmp_path / "memory.sqlite"
    shared = MemoryStore(path, user="alice")
    other = MemoryStore(path, user="bob")  # a second connection to the same file
    errors = []

    def write(s, name):
        try:
            for i in range(60):
                assert s.add(f"{name} fact{i} topic{i}", "partner", turn=i) is not None
                if i % 10 == 0:
                    s.advance_turn()
        except Exception as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=args)
        for args in [(shared, "one"), (shared, "two"), (other, "three")]
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert shared.counts() == {"alice": 120, "bob": 60}
    assert len({e.id for e in shared.list_entries()}) == 180
    assert shared._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the same duplicate from two threads at once is stored once (check and insert are one step)
    barrier = threading.Barrier(4)
    results = []

    def add_same():
        barrier.wait()
        results.append(shared.add("I race pigeons", "partner"))

    racers = [threading.Thread(target=add_same) for _ in range(4)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    assert sum(r is not None for r in results) == 1
    shared.close()
    other.close()


def test_bad_input_is_one_line_herd_error(tmp_path, store):
    not_sqlite = tmp_path / "notes.sqlite"
    not_sqlite.write_text("these are my notes, not a database\n" * 50)
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    newer = tmp_path / "newer.sqlite"
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    cases = [
        (lambda: MemoryStore(tmp_path / "missing" / "m.sqlite"), "does not exist"),
        (lambda: MemoryStore(tmp_path), "is a folder"),
        (lambda: MemoryStore(not_sqlite), "not a usable SQLite database"),
        (lambda: MemoryStore(foreign), "is not an agent store"),
        (lambda: MemoryStore(newer), "is newer than"),
        (lambda: MemoryStore(tmp_path / "m.sqlite", user=""), "is not a name"),
        (lambda: store.add("I like tea", "user"), "speaker 'user' is unknown"),
    ]
    for make, message in cases:
        with pytest.raises(HerdError, match=message) as info:
            make()
        assert "\n" not in str(info.value)
