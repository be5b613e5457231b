"""Run the `herd` command in a subprocess, as a user would, and check one-line errors."""

from __future__ import annotations

import subprocess
import sys


def herd_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "herd", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def one_line_error(proc, *fragments):
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0]
