"""What the benchmarks share: logging against the process start, device synchronisation, greedy
agreement of two generations, and (bench/gpu_decode.py and bench/gpu_train.py) the run's
environment and a results file rewritten after every stage.

A lent GPU machine has a hard time limit, so each benchmark records what finished as it goes: a
stage that fails is logged with its error and the others still run, and a stage that would start
past the script's time budget is skipped and said so, rather than losing the whole JSON.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def quiet() -> None:
    """Silence warnings that inductor's autotuning and transformers' loading print every time."""
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two generations share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Results(dict):
    """The benchmark's JSON record: versions and device first, then `engines` and `errors` filled
    stage by stage; `save()` rewrites the file (when there is one) with the seconds elapsed."""

    def __init__(self, path: Path | None, device: torch.device, **fields):
        super().__init__(fields)
        self.path = path
        self.update(torch=torch.__version__, python=sys.version.split()[0], host=platform.node())
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("CUDA is not available (use --device cpu for a dry run)")
            self.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
        self.update(engines={}, errors={})
        log(f"torch {torch.__version__} on {self.get('gpu', device.type)}")

    def save(self) -> None:
        self["total_s"] = time.perf_counter() - START
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self, indent=2) + "\n")

    def fail(self, name: str, error: BaseException | str) -> None:
        """Record and log a stage's failure (with the traceback when there is an exception)."""
        if isinstance(error, BaseException):
            traceback.print_exception(error)
            error = f"{type(error).__name__}: {error}"
        self["errors"][name] = error
        log(f"{name} failed: {error}")

    def stage(self, name: str, fn: Callable[[], None]) -> None:
        """Run one stage; record a failure and go on, so one broken engine loses nothing else."""
        try:
            fn()
        except Exception as e:
            self.fail(name, e)
        self.save()

    def within_budget(self, name: str, budget_s: float) -> bool:
        """False (the stage recorded as skipped) once `budget_s` seconds have passed."""
        elapsed = time.perf_counter() - START
        if elapsed <= budget_s:
            return True
        self["errors"][name] = f"skipped: {elapsed:.0f} s elapsed > --budget-s"
        log(f"{name} skipped ({elapsed:.0f} s > --budget-s {budget_s:.0f})")
        self.save()
        return False
