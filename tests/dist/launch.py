"""Two gloo processes under torchrun, as the FSDP2 tests launch them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One thread per process (two processes share the cores); the repository importable as `tests`.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(port: int, *target: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc-per-node 2 TARGET...` from the repository root;
    fails the test with the end of stderr when it fails. On timeout (a hung collective, say) the
    workers are stopped with the launcher and subprocess.TimeoutExpired is raised."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(port),
        *target,
    ]
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # torchrun stops its workers on SIGTERM (they run in sessions of their own, so
            # killing the launcher's group would leave them waiting in a collective)
            proc.terminate()
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            raise
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
