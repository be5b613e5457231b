"""Shared test set-up: each xdist worker's share of the cores, and a fixed seed per test.

Reference tokenizer files come from tests/references.py (inside the repository or a dev
dependency), never from outside the checkout."""

from __future__ import annotations

import os

import pytest
import torch


def _share_cores_between_workers() -> None:
    """Under pytest-xdist every worker would start as many compute threads as there are cores;
    with two workers on two cores OpenMP's spinning threads then fight over the cores and steps
    take several times longer. Each worker (and every process it starts, through the OMP_NUM_THREADS
    it inherits) gets its share instead."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_share_cores_between_workers()


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: the cores this process may run on (xdist would count the host's)."""
    return len(os.sched_getaffinity(0))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_guard(tmp_path_factory) -> str:
    """The tiny keyword guard of tests/guard_model.py (a checkpoint path), trained once per test
    run: xdist workers share one folder of the run's temporary tree, and the first to take its
    lock trains while the others wait for the result."""
    import fcntl
    import json

    from tests.guard_model import train_tiny_guard

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-guard"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "done.json"
        if not done.is_file():
            done.write_text(json.dumps({"checkpoint": str(train_tiny_guard(root / "guard"))}))
        return json.loads(done.read_text())["checkpoint"]


@pytest.fixture(scope="session")
def tiny_agent(tmp_path_factory) -> tuple[str, str]:
    """The tiny agent model of tests/agent_model.py and the search index of its world
    (checkpoint path, index folder), trained once per test run: xdist workers share one folder
    of the run's temporary tree, and the first to take its lock trains while the others wait."""
    import fcntl
    import json

    from tests.agent_model import train_tiny_agent

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-agent"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "done.json"
        if not done.is_file():
            checkpoint, index = train_tiny_agent(root / "agent")
            done.write_text(json.dumps({"checkpoint": str(checkpoint), "index": str(index)}))
        paths = json.loads(done.read_text())
        return paths["checkpoint"], paths["index"]
