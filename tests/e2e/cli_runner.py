"""Run the `herd` command as a user would, and check one-line errors.

`herd_cli` starts `python -m herd` in a subprocess: the real path, exit code and all. Each start
imports torch (seconds), so tests that make many calls, error checks above all, use
`herd_cli_inprocess`: the same `herd.cli.main` in this process, returning the same
`CompletedProcess`. Every test file keeps real `herd_cli` calls, one-line exit-2 errors among them.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import random
import subprocess
import sys
import tempfile
import traceback
import warnings

# CPython's warning filters in a fresh process without -W or PYTHONWARNINGS
_FRESH_PROCESS_FILTERS = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)


def herd_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "herd", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def herd_cli_inprocess(*args, check=True):
    """`herd ARGS` run by `herd.cli.main` in this process, as `herd_cli` reports it.

    What a separate process would print reaches the result: Python's stdout and stderr, then what
    native code (sentencepiece, tokenizers) writes to file descriptors 1 and 2, and warnings, shown
    as a fresh process shows them (once per place, not routed to pytest). `SystemExit` (argparse
    errors) and uncaught exceptions become exit codes as in `python -m herd`. The interpreter state
    a command may change (environment, working folder, sys.argv, torch threads, default dtype, grad
    mode, random generators) is put back afterwards.
    """
    import numpy as np
    import torch

    from herd.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    threads, dtype, grad = (
        torch.get_num_threads(),
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
    )
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    sys.argv = [sys.argv[0], *argv]
    try:
        with (
            _native_output(1) as native_out,
            _native_output(2) as native_err,
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            _fresh_process_warnings()
            try:
                code = main(argv)
            except SystemExit as e:
                code = _exit_code(e, err)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        if dict(os.environ) != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
    proc = subprocess.CompletedProcess(
        ["herd", *argv], code, out.getvalue() + native_out(), err.getvalue() + native_err()
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _exit_code(e: SystemExit, err: io.StringIO) -> int:
    """The exit status the interpreter gives `raise SystemExit(e.code)`."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    err.write(f"{e.code}\n")
    return 1


def _fresh_process_warnings() -> None:
    """Inside catch_warnings: the default filters, and warnings printed on (redirected) stderr."""
    warnings.resetwarnings()
    for action, category, module in _FRESH_PROCESS_FILTERS:
        warnings.filterwarnings(action, category=category, module=module, append=True)

    def show(message, category, filename, lineno, file=None, line=None):
        text = warnings.formatwarning(message, category, filename, lineno, line)
        (file or sys.stderr).write(text)

    warnings.showwarning = show


@contextlib.contextmanager
def _native_output(fd: int):
    """Point file descriptor `fd` at a temporary file for the block; yields a function returning
    what was written there (by native code, past sys.stdout/sys.stderr)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(fd)
    text = None
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), fd)
            yield lambda: text
        finally:
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)  # C stdio buffers go out before the fd goes back
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")


def one_line_error(proc, *fragments):
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0]
