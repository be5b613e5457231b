"""Every agent turn, kept: the context it answered, the reply, whether the guard stepped in, the
JSON trace of each module and tool call (prompt, output, parsed value, seconds), and the user's
feedback on the reply (thumbs up or down, free text), in the same SQLite file as the memory
(table `turns`, schema version 2 of herd/agent/memory.py).

Feedback is BB3x's (Xu et al. 2022, "Learning New Skills after Deployment"; FITS): a binary rating
of a bot reply and optionally free text saying what was wrong or what the reply should have been.
`herd agent feedback export` turns it into training data (herd/agent/feedback.py); a Director
classifier head learns from the ratings (herd/agent/director.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from herd.agent.memory import MemoryStore
from herd.errors import HerdError

_COLUMNS = ("id", "user", "session", "turn", "created_at", "context", "reply", "flagged", "trace",
            "rating", "feedback", "correction", "rated_at")  # fmt: skip
RATINGS = {"good": 1, "bad": -1}


@dataclass(frozen=True)
class TurnRecord:
    id: int
    user: str
    session: str
    turn: int
    created_at: float
    context: list[dict]  # the chat messages the reply answered (ending with the user's)
    reply: str
    flagged: str | None  # "input", "output" or "tool": the guard replaced or refused something
    trace: dict
    rating: int | None  # 1 good, -1 bad, None unrated
    feedback: str | None  # what the user said about the reply
    correction: str | None  # the reply the user says it should have been
    rated_at: float | None

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _COLUMNS}


def _record(row: tuple) -> TurnRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["context"] = json.loads(values["context"])
    values["trace"] = json.loads(values["trace"])
    return TurnRecord(**values)


class TurnLog:
    """The turns of one memory file; writes are the store's (one lock, one connection)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def add(
        self, turn: int, context: list[dict], reply: str, trace: dict, flagged: str | None
    ) -> int:
        """Record a turn of the store's user and session; its id."""
        with self.store.transaction() as db:
            cursor = db.execute(
                "INSERT INTO turns (user, session, turn, created_at, context, reply, flagged, trace) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self.store.user, self.store.session, int(turn), time.time(),
                 json.dumps(context, ensure_ascii=False), reply, flagged,
                 json.dumps(trace, ensure_ascii=False, default=str)),
            )  # fmt: skip
            return cursor.lastrowid

    def rate(
        self,
        turn_id: int,
        rating: str | int,
        feedback: str | None = None,
        correction: str | None = None,
    ) -> TurnRecord:
        """Store thumbs up ("good", 1) or down ("bad", -1), optional free text about the reply and
        optionally the reply it should have been (only with "bad"); a later rating of the same
        turn replaces the earlier one."""
        value = RATINGS.get(rating, rating) if isinstance(rating, str) else rating
        if value not in (1, -1):
            raise HerdError(f"rating {rating!r}: expected 'good', 'bad', 1 or -1")
        text, fixed = (x.strip() if isinstance(x, str) and x.strip() else None
                       for x in (feedback, correction))  # fmt: skip
        if fixed is not None and value != -1:
            raise HerdError("a correction goes with a 'bad' rating")
        with self.store.transaction() as db:
            if not db.execute(
                "UPDATE turns SET rating = ?, feedback = ?, correction = ?, rated_at = ? "
                "WHERE id = ?",
                (value, text, fixed, time.time(), int(turn_id)),
            ).rowcount:
                raise HerdError(f"{self.store.path}: no agent turn with id {turn_id}")
        return self.get(turn_id)

    def get(self, turn_id: int) -> TurnRecord:
        rows = self.store.query(f"SELECT {', '.join(_COLUMNS)} FROM turns WHERE id = ?", (turn_id,))
        if not rows:
            raise HerdError(f"{self.store.path}: no agent turn with id {turn_id}")
        return _record(rows[0])

    def turns(self, *, user: str | None = None, rated: bool = False) -> list[TurnRecord]:
        """Turns in order (every user's unless `user`), only the rated ones with `rated`."""
        where, params = [], []
        if user is not None:
            where.append("user = ?")
            params.append(user)
        if rated:
            where.append("rating IS NOT NULL")
        sql = f"SELECT {', '.join(_COLUMNS)} FROM turns"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_record(r) for r in self.store.query(sql + " ORDER BY id", tuple(params))]

    def last_turn(self) -> int:
        """The highest turn number this user has reached (0 for a new user): a restarted agent
        goes on counting, so memory decay and blocking see the turns of earlier sessions."""
        rows = self.store.query("SELECT MAX(turn) FROM turns WHERE user = ?", (self.store.user,))
        return int(rows[0][0] or 0)
