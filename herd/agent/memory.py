"""Long-term memory of a BlenderBot 3-style agent: short persona notes in SQLite, per user.

BB3 (Shuster et al. 2022, ParlAI projects/bb3) writes one note per turn about the partner and one
about itself ("I have two dogs"), keeps a counter per note of turns since it was last used, and
before each reply hands the model the notes that overlap the partner's message. This module is
that store, made durable: one SQLite file (WAL) holds every user's notes, survives restarts, and is
what `herd agent memory list|delete|export` edits. From BB3 (projects/bb3/agents/utils.py):

- rejection: empty notes and the memory generator's "nothing to remember" outputs (`NO_PERSONA_NOTES`)
  are never stored;
- dedup (`no_overlap`): a note is a near-duplicate of an earlier note of the same user and speaker
  when fewer than `DEDUP_MIN_UNSHARED` (BB3: 1) of the earlier note's normalised tokens are missing
  from it, i.e. by default when it contains every token of the earlier note;
- retrieval (`get_available_memories`, `maybe_reduce_memories`): candidates share a content word with
  the incoming text (optionally token F1 >= a threshold); notes used in the last `block_recent` turns
  are blocked; beyond `MEMORY_CAP` (32 = 512 tokens / 16 per note) a lexical ranker keeps the top
  ones. BB3 ranked with ParlAI's TF-IDF `score_match`; we rank with BM25 (bm25s, the dependency our
  search index already has), and order every result by that score.

The schema's version is SQLite's `PRAGMA user_version`, set in the same transaction as the tables,
so later stores in this file arrive as further entries of `_MIGRATIONS` (version 2: the agent's
per-turn traces and feedback, herd/agent/traces.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

from herd.atomic_files import write_file_atomically
from herd.errors import HerdError

MEMORY_CAP = 32
DEDUP_MIN_UNSHARED = 1
SPEAKERS = ("partner", "self")
# BB3's `is_valid_memory` rejects these outputs of the memory generator: the MSC "no persona" target
# (parlai/tasks/msc/agents.py NOPERSONA), the OPT prompt's "no persona" (projects/bb3/prompts.py
# NO_MEMORY) and the API's failure text. Compared after `squash_text`, so case, underscores and
# punctuation variants ("No persona.", "no_persona") are rejected too.
NO_PERSONA_NOTES = ("__NO__PERSONA__BEAM__MIN__LEN__20__", "no persona", "METASEQ RESPONSE FAILED.")

# BB3's deliberately short stop list for dedup: pronouns stay, because "I have a dog" and "you have
# a dog" are different memories. Retrieval drops pronouns too (BB3: nltk's English list, which is
# bm25s's STOPWORDS_EN_PLUS), since "I" or "you" overlapping says nothing about the topic.
# fmt: off
_DEDUP_STOPWORDS = frozenset({
    "a", "an", "the", "am", "are", "is", "as",
    "really", "actually", "up", "so", "just", "now", "how", "then", "also", "very", "too", "most", "but",
})
# fmt: on
_CONTRACTIONS = {"won't": "will not", "can't": "can not", "n't": " not", "'m": " am", "'re": " are"}
_CONTRACTIONS |= {"'ve": " have", "'ll": " will", "'d": " would", "'s": ""}
_CONTRACTION = re.compile(r"won't|can't|n't|'m|'re|'ve|'ll|'d|'s")
_WORD = re.compile(r"[a-z0-9]+")

# Each entry lists the statements that take the schema from version i to i + 1. AUTOINCREMENT so
# that a deleted note's id is never handed out again: traces and the CLI refer to notes by id.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE memories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            text TEXT NOT NULL,
            speaker TEXT NOT NULL CHECK (speaker IN ('partner', 'self')),
            created_at REAL NOT NULL,
            created_turn INTEGER NOT NULL,
            last_used_turn INTEGER,
            turns_since_used INTEGER NOT NULL DEFAULT 0,
            uses INTEGER NOT NULL DEFAULT 0,
            session TEXT NOT NULL)""",
        "CREATE INDEX memories_by_user ON memories (user, speaker)",
        "CREATE INDEX memories_by_session ON memories (user, session)",
    ),
    (  # herd.agent.traces: one row per agent turn, with its trace and the user's rating
        """CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            session TEXT NOT NULL,
            turn INTEGER NOT NULL,
            created_at REAL NOT NULL,
            context TEXT NOT NULL,
            reply TEXT NOT NULL,
            flagged TEXT,
            trace TEXT NOT NULL,
            rating INTEGER CHECK (rating IN (-1, 1)),
            feedback TEXT,
            correction TEXT,
            rated_at REAL)""",
        "CREATE INDEX turns_by_user ON turns (user, session, turn)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclasses.dataclass(frozen=True)
class MemoryEntry:
    """One stored note. `turns_since_used` counts `advance_turn` calls since the note was added or
    last used (BB3's per-memory counter); `last_used_turn` is None until it is first used."""

    id: int
    user: str
    text: str
    speaker: str
    created_at: float
    created_turn: int
    last_used_turn: int | None
    turns_since_used: int
    uses: int
    session: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_COLUMNS = tuple(f.name for f in dataclasses.fields(MemoryEntry))


class ScoredMemory(NamedTuple):
    entry: MemoryEntry
    score: float  # BM25 of the note against the incoming text


def normalise_tokens(text: str, drop_pronouns: bool = False) -> list[str]:
    """BB3's `normal_tokenizer` without nltk: lowercase, expand contractions, keep words, drop stop
    words, and fold a plural or third-person "s" (dogs -> dog, likes -> like) where BB3 ran the
    Porter stemmer (a full stemmer is not worth a dependency for matching short notes)."""
    text = _CONTRACTION.sub(lambda m: _CONTRACTIONS[m.group()], text.lower().replace("\u2019", "'"))
    stop = _retrieval_stopwords() if drop_pronouns else _DEDUP_STOPWORDS
    words = [w for w in _WORD.findall(text) if w not in stop]
    return [
        w[:-1] if len(w) > 3 and w[-1] == "s" and w[-2:] not in ("ss", "us", "is") else w
        for w in words
    ]


@functools.cache
def _retrieval_stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS  # bm25s takes a second to import: only when used

    return _DEDUP_STOPWORDS | frozenset(STOPWORDS_EN_PLUS)


def squash_text(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


_REJECTED_NOTES = frozenset(squash_text(n) for n in NO_PERSONA_NOTES)


def token_f1(note: list[str], query: list[str]) -> float:
    common = sum((Counter(note) & Counter(query)).values())
    return 0.0 if common == 0 else 2 * common / (len(note) + len(query))


def _bm25_scores(docs: list[list[str]], query: list[str]) -> list[float]:
    import bm25s

    if not docs:
        return []
    ranker = bm25s.BM25()
    ranker.index(docs, show_progress=False)
    return [float(s) for s in ranker.get_scores(list(dict.fromkeys(query)))]


class MemoryStore:
    """One user's view of a memory file; `list_entries`, `delete_entries` and the exports see every
    user. Safe to share between threads of one process: a single connection (check_same_thread off)
    behind a lock, because a sqlite3 connection must not run two statements at once and because the
    dedup check and the insert it guards have to be one step. Other processes (the CLI editing while
    an agent runs) are serialised by SQLite itself: WAL lets readers go on beside one writer, and a
    writer waits up to `timeout` seconds for the lock."""

    def __init__(
        self,
        path: str | Path,
        user: str = "default",
        *,
        session: str | None = None,
        dedup_min_unshared: int = DEDUP_MIN_UNSHARED,
        timeout: float = 30.0,
    ):
        self.path = Path(path)
        if not isinstance(user, str) or not user.strip():
            raise HerdError(f"memory user {user!r} is not a name; expected a non-empty string")
        if not self.path.parent.is_dir():
            raise HerdError(
                f"{self.path}: folder {self.path.parent} does not exist; create it first"
            )
        if self.path.is_dir():
            raise HerdError(f"{self.path}: is a folder; expected a SQLite file for agent memory")
        self.user = user
        self.session = session or uuid.uuid4().hex
        self.dedup_min_unshared = dedup_min_unshared
        self._lock = threading.RLock()
        self._db = None
        try:
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise HerdError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            # In WAL, NORMAL still survives a crash of the process; only power loss can drop the
            # last transactions, which for chat notes is not worth an fsync per turn.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (sqlite3.DatabaseError, HerdError) as exc:
            if self._db is not None:
                self._db.close()
            if isinstance(exc, HerdError):
                raise
            raise HerdError(f"{self.path}: not a usable SQLite database ({exc})") from None

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HerdError(
                    f"{self.path}: agent store schema version {version} is newer than this herd's "
                    f"{SCHEMA_VERSION}; upgrade herd"
                )
            if version == 0:
                tables = [
                    r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                if tables:
                    raise HerdError(
                        f"{self.path}: SQLite file with tables {tables} is not an agent store"
                    )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a read-only statement, under the store's lock."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self):
        """One write transaction on the file (the notes here; the turns in traces.py)."""
        # BEGIN IMMEDIATE takes the write lock up front, so a read-then-write (dedup, then insert)
        # cannot interleave with another process's write.
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # "database is locked" after the timeout
                raise HerdError(
                    f"{self.path}: cannot write ({exc}); another process holds it"
                ) from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, where: str = "", params: tuple = ()) -> list[MemoryEntry]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM memories {where} ORDER BY user, id", params
            ).fetchall()
        return [MemoryEntry(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.counts().get(self.user, 0)

    # --- writing notes ---------------------------------------------------------------------------

    def why_rejected(self, text: str, speaker: str) -> str | None:
        """Why `add` would refuse this note (a one-line reason, for traces), or None."""
        with self._lock:
            return self._rejection(self._db, text, speaker)

    def _rejection(self, db: sqlite3.Connection, text: str, speaker: str) -> str | None:
        if speaker not in SPEAKERS:
            raise HerdError(f"memory speaker {speaker!r} is unknown; expected 'partner' or 'self'")
        if not isinstance(text, str):
            raise HerdError(f"memory text {text!r} is not a string")
        if not squash_text(text):
            return "empty note"
        if squash_text(text) in _REJECTED_NOTES:
            return f"'no persona' note {text.strip()!r}"
        tokens = set(normalise_tokens(text))
        if not tokens:
            # An empty token set is a subset of every note: stored, it would reject all later ones.
            return "note has only stop words"
        rows = db.execute(
            "SELECT id, text FROM memories WHERE user = ? AND speaker = ?", (self.user, speaker)
        ).fetchall()
        for entry_id, earlier in rows:
            if len(set(normalise_tokens(earlier)) - tokens) < self.dedup_min_unshared:
                return f"near-duplicate of memory {entry_id} {earlier!r}"
        return None

    def add(self, text: str, speaker: str, turn: int = 0) -> int | None:
        """Store a note about `speaker` ("partner" or "self") made at `turn`; its id, or None when it
        is rejected (empty, a "no persona" note, or a near-duplicate, see `why_rejected`)."""
        with self.transaction() as db:
            if self._rejection(db, text, speaker) is not None:
                return None
            cursor = db.execute(
                "INSERT INTO memories (user, text, speaker, created_at, created_turn, session) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.user, text.strip(), speaker, time.time(), int(turn), self.session),
            )
            return cursor.lastrowid

    def advance_turn(self) -> None:
        """One turn passed: every note of this user is one turn further from its last use. Call it
        once per turn before `mark_used`, as BB3's `update_memory_usage` does."""
        with self.transaction() as db:
            db.execute(
                "UPDATE memories SET turns_since_used = turns_since_used + 1 WHERE user = ?",
                (self.user,),
            )

    def mark_used(self, ids: list[int], turn: int) -> None:
        """The reply at `turn` used these notes: reset their counters."""
        ids = sorted({int(i) for i in ids})
        with self.transaction() as db:
            for entry_id in ids:
                if not db.execute(
                    "UPDATE memories SET last_used_turn = ?, turns_since_used = 0, uses = uses + 1 "
                    "WHERE user = ? AND id = ?",
                    (int(turn), self.user, entry_id),
                ).rowcount:  # raising rolls back the ones before
                    raise HerdError(f"{self.path}: no memory {entry_id} for user {self.user!r}")

    # --- retrieval -------------------------------------------------------------------------------

    def retrieve(
        self,
        text: str,
        k: int = MEMORY_CAP,
        *,
        block_recent: int = 0,
        min_overlap: float = 0.0,
        skip_this_session: bool = False,
    ) -> list[ScoredMemory]:
        """This user's notes for a reply to `text`, best first, at most `k`. A candidate shares a
        content word with `text` (and has token F1 >= `min_overlap`, BB3's memory_overlap_threshold);
        notes used fewer than `block_recent` turns ago are blocked (BB3's hard block; a note never
        used is not blocked); `skip_this_session` drops notes written in this session (BB3's
        ignore_in_session_memories). The candidates are ranked by BM25 against `text`."""
        query = normalise_tokens(text, drop_pronouns=True)
        if not query or k <= 0:
            return []
        candidates, docs = [], []
        for entry in self._select("WHERE user = ?", (self.user,)):
            if entry.last_used_turn is not None and entry.turns_since_used < block_recent:
                continue
            if skip_this_session and entry.session == self.session:
                continue
            tokens = normalise_tokens(entry.text, drop_pronouns=True)
            if not set(tokens) & set(query) or token_f1(tokens, query) < min_overlap:
                continue
            candidates.append(entry)
            docs.append(tokens)
        scores = _bm25_scores(docs, query)
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].id))
        return [ScoredMemory(candidates[i], scores[i]) for i in order[:k]]

    # --- editing: what `herd agent memory list|delete|export` runs --------------------------------

    def list_entries(self, user: str | None = None) -> list[MemoryEntry]:
        """Every user's notes (user None), or one user's, ordered by user and id."""
        return self._select() if user is None else self._select("WHERE user = ?", (user,))

    def counts(self) -> dict[str, int]:
        """Number of notes per user."""
        with self._lock:
            return dict(
                self._db.execute("SELECT user, COUNT(*) FROM memories GROUP BY user ORDER BY user")
            )

    def delete_entries(self, ids: list[int]) -> list[int]:
        """Delete notes by id, whatever their user; the ids that existed and are now gone."""
        ids = sorted({int(i) for i in ids})
        deleted = []
        with self.transaction() as db:
            for entry_id in ids:
                if db.execute("DELETE FROM memories WHERE id = ?", (entry_id,)).rowcount:
                    deleted.append(entry_id)
        return deleted

    def export_entries(
        self, destination: str | Path | IO[str], format: str = "jsonl", user: str | None = None
    ) -> int:
        """Write the notes (every user's, or one user's) as JSON lines ("jsonl") or one JSON list
        ("json") to a path (written atomically) or an open text stream; the number written."""
        if format not in ("jsonl", "json"):
            raise HerdError(
                f"memory export format {format!r} is unknown; expected 'jsonl' or 'json'"
            )
        rows = [e.to_dict() for e in self.list_entries(user)]
        if format == "json":
            content = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
        else:
            content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if isinstance(destination, (str, Path)):
            write_file_atomically(Path(destination), lambda f: f.write(content.encode("utf-8")))
        else:
            destination.write(content)
        return len(rows)
