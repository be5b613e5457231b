"""Reading the steps' verdicts back from the device, and logging what they say.

Each step leaves one row of herd.train.spikes.FIELDS on the device (its loss, largest micro-batch
loss, gradient norm, and whether its update was skipped and why). The rows wait there, costing
nothing, until the trainer needs them on the host (a log, monitor, evaluation or checkpoint
step, or every step under a response that acts from the host); then all of them come back in one
transfer and their events are logged, in order, at the steps they belong to: non-finite
gradients, loss spikes and skipped updates, and a loud warning (an event and a stderr line) when
skipping stops the run from making progress.
"""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from herd.train.runlog import RunLog
from herd.train.spikes import FIELDS
from herd.train.stability import Stability

FLAGS = ("skipped", "nonfinite", "spike", "limited", "window_full")


class Verdicts:
    def __init__(self, log: RunLog, stability: Stability, rank: int) -> None:
        self.log, self.stability, self.rank = log, stability, rank
        self.max_skips = stability.config.max_skips
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, FIELDS row) still on device
        self.last: dict = {}  # the newest step read
        self.unapplied = 0  # consecutive steps without an update, as read so far
        self.responses: list[str] = []  # lower_lr / eps, to apply after the current update

    def add(self, step: int, row: torch.Tensor) -> None:
        self.pending.append((step, row))

    def read(self) -> int | None:
        """Read the pending rows (one transfer), log their events in order, and return the step
        of a spike to rewind from, if any. The rows after that spike stay pending: a rewind
        undoes their steps (`clear`); if there is nothing to rewind to, `read` goes on."""
        if not self.pending:
            return None
        steps = [s for s, _ in self.pending]
        rows = torch.stack([r for _, r in self.pending]).tolist()
        for i, (step, values) in enumerate(zip(steps, rows, strict=True)):
            v = self.last = {"step": step, **dict(zip(FIELDS, values, strict=True))}
            v.update({flag: bool(v[flag]) for flag in FLAGS})
            action = self._log_events(step, v)
            if action == "rewind":
                del self.pending[: i + 1]
                return step
            if action in ("lower_lr", "eps"):
                self.responses.append(action)
        self.pending.clear()
        return None

    def _log_events(self, step: int, v: dict) -> str | None:
        """The events of one step; returns the spike response to carry out, if any."""
        action = None
        if v["nonfinite"]:
            self.log.event(step, "nonfinite_grad", grad_norm=v["grad_norm"], loss=v["loss"])
        if v["spike"]:
            action = "log" if v["limited"] else self.stability.response_for()
            detail = {k: v[k] for k in ("median", "mad", "z")}
            self.log.event(step, "loss_spike", loss=v["loss"], response=action, **detail)
            if v["limited"] and self.unapplied >= self.max_skips:
                self._warn(
                    step,
                    "skip_limit",
                    f"{self.unapplied} consecutive loss spikes skipped; updates apply again "
                    "and the spike detector's window takes in the new loss level",
                )
        if v["skipped"] and not v["nonfinite"]:
            self.log.event(step, "update_skipped", loss=v["loss"])
        self.unapplied = self.unapplied + 1 if v["skipped"] else 0
        if v["nonfinite"] and self.unapplied == self.max_skips:
            self._warn(
                step,
                "no_progress",
                f"no update applied for {self.unapplied} consecutive steps (non-finite "
                "gradients): the run is not making progress",
            )
        if v["skipped"] and self.stability.snapshot_step(step - 1):
            self.stability.drop_gradients()  # the monitor's previous step never happened
        return action

    def _warn(self, step: int, event: str, message: str) -> None:
        """An event, and a line on stderr: the run is not doing what the user asked for."""
        self.log.event(step, event, message=message)
        if self.rank == 0:
            tqdm.write(f"warning: step {step}: {message}", file=sys.stderr)

    def clear(self) -> None:
        """Forget unread rows (a rewind undid their steps)."""
        self.pending.clear()
        self.responses.clear()
