"""Two gloo processes under torchrun, as the FSDP2 tests launch them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One thread per process (two processes share the cores); the repository importable as `tests`.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(port: int, *target: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc-per-node 2 TARGET...` from the repository root;
    fails the test with the end of stderr when it fails."""
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
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
