"""The run folder's JSON-lines files: metrics.jsonl, events.jsonl and stability.jsonl.

Every analysis (plots, stability reports, scaling fits) reads these files, never stdout. Only rank 0
writes; each record is appended as one line, so a run killed mid-write loses at most that line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


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
        if not self.metrics.is_file():
            return {}
        out: dict = {}
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("step") == step:
                out.update(record)
        return out

    def metric(self, record: dict) -> None:
        self._append(self.metrics, record)

    def stability(self, record: dict) -> None:
        self._append(self.run_dir / "stability.jsonl", record)

    def event(self, step: int, event: str, **details) -> None:
        self._append(self.events, {"step": step, "event": event, "time": time.time(), **details})
