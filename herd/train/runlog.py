"""The run folder's JSON-lines files: metrics.jsonl, events.jsonl and stability.jsonl.

Every analysis (plots, stability reports, scaling fits) reads these files, never stdout. Only rank 0
writes; each record is appended as one line, so a run killed mid-write loses at most that line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

# Events that record the resume history itself: kept when a resume drops the steps after its
# checkpoint, since the resumed run does not log them again.
_HISTORY = ("resume", "checkpoint_skipped", "stale_checkpoint_removed")


def _kept(line: str, step: int) -> bool:
    record = json.loads(line)
    return record["step"] <= step or record.get("event") in _HISTORY


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, in order; [] when there is no such file."""
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def split_undone(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, undone) of step-ordered records of one kind: a stability rewind restores an earlier
    checkpoint and logs the replayed steps again, so a record is undone when a later one has the
    same or an earlier step. `kept` is the trajectory the run's weights went through; both lists
    stay in file order."""
    floor = float("inf")
    undone = [False] * len(records)
    for i in range(len(records) - 1, -1, -1):
        if records[i]["step"] >= floor:
            undone[i] = True
        else:
            floor = records[i]["step"]
    kept = [r for r, u in zip(records, undone, strict=True) if not u]
    return kept, [r for r, u in zip(records, undone, strict=True) if u]


class RunLog:
    """Appends JSON lines to metrics.jsonl and events.jsonl (analyses read these, not stdout)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.metrics = run_dir / "metrics.jsonl"
        self.events = run_dir / "events.jsonl"
        self.enabled = enabled  # only rank 0 writes

    def _append(self, path: Path, record: dict) -> None:
        if not self.enabled:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metrics_at(self, step: int) -> dict:
        """The metric lines logged at `step` (training and validation), merged into one."""
        out: dict = {}
        for record in read_jsonl(self.metrics):
            if record.get("step") == step:
                out.update(record)
        return out

    def metric(self, record: dict) -> None:
        self._append(self.metrics, record)

    def stability(self, record: dict) -> None:
        self._append(self.run_dir / "stability.jsonl", record)

    def event(self, step: int, event: str, **details) -> None:
        self._append(self.events, {"step": step, "event": event, "time": time.time(), **details})

    def truncate(self, step: int) -> None:
        """Drop what was logged past `step`, the checkpoint a run resumes from: the resumed run
        logs those steps (metrics, stability records and their events: spikes, checkpoints,
        rewinds) again, so a crash and resume leaves the files of an uninterrupted run, plus the
        resume history (`resume`, `checkpoint_skipped` events)."""
        if not self.enabled:
            return
        for path in (self.metrics, self.run_dir / "stability.jsonl", self.events):
            if path.exists():
                lines = path.read_text(encoding="utf-8").splitlines()
                kept = [x for x in lines if x.strip() and _kept(x, step)]
                path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
