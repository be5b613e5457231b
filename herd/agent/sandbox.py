"""The sandbox behind the agent's `code_interpreter` tool: a model's Python, run in another process.

Llama 3.1 calls its built-in `code_interpreter` by writing Python after `<|python_tag|>`; the agent
runs it with `run_python` and shows the model `RunResult.to_tool_text()` in the `ipython` role. The
code is untrusted (a model wrote it, often at a user's request), so it runs:

- in a fresh temporary working folder (its cwd, HOME and TMPDIR), deleted afterwards; the files it
  wrote there come back in `RunResult.files`;
- under rlimits (CPU seconds, data size, file size, open files, processes) and a wall-clock limit
  and output cap that this process enforces by killing the sandbox's whole process group;
- with a handful of fixed environment variables, so no API key or token of ours leaks in;
- as `python -E -s -B -u`: not `-S`, which would drop the venv's site-packages (numpy is what
  the model reaches for), and not `-I`, whose safe-path drops the working folder from sys.path and
  with it the modules passed in `files`.

Isolation, strongest available first (`RunResult.network_isolation` says which ran):

- "namespace" (we are root): new network, mount and PID namespaces; the code then runs as `nobody`
  without capabilities (in a user namespace of its own, so the process limit counts only its tasks).
- "userns" (not root, where unprivileged user namespaces are allowed, as on most distributions):
  the same namespaces inside a new user namespace; the code keeps its uid and has no capabilities.
- "python-guard" (neither worked, or asked for): an audit hook refuses sockets, DNS, subprocesses,
  ctypes calls and writes outside the folder. Audit hooks are no security boundary (C code ignores
  them), so this is logged as a warning. Root drops to `nobody` only if nobody can run this Python
  (`RunResult.uid` says; as root, RLIMIT_NPROC does not apply), and a process that kills the
  sandbox's init can leave orphans behind.

With namespaces the network namespace holds only a downed loopback device, and the mount view hides
/tmp, /var/tmp, /run, /dev/shm, /home, /root and the caller's home behind empty tmpfs (other programs'
sockets, temporary files, credentials), binds the Python installation back where it lay under them,
and remounts every mount read-only except the working folder (`RunResult.readonly_fs`); /proc is a
fresh one of the PID namespace (the host's would show other processes and, through /proc/PID/cwd,
other sandboxes' folders). When the code's main process ends, every process it started is killed:
the PID namespace dies with its init. All of this is set up in the child, by `confine.py`.

Memory: `memory_mb` caps RLIMIT_DATA (heap and private mappings: what allocations use, so a 2 GB
bytearray raises MemoryError), and RLIMIT_AS is capped at four times that, as libraries reserve much
address space they never touch (importing torch maps ~600 MB). A cgroup would be exact; it needs a
delegated cgroup tree, which neither root in a container nor a user session reliably has.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from herd.agent.confine import HIDDEN, NOBODY, guard_source
from herd.errors import HerdError

PROGRAM = "main.py"
_log = logging.getLogger(__name__)
_warned: list[bool] = []  # the python-guard warning, once per process


@dataclass
class Limits:
    """What one run may use. Times in seconds; the wall clock includes Python's start-up."""

    cpu_seconds: float = 5
    wall_seconds: float = 10
    memory_mb: int = 512
    output_bytes: int = 64_000  # stdout and stderr together; the run is killed past it
    processes: int = 32  # tasks (processes and threads) it may have at once, itself included
    file_bytes: int = 16_000_000  # largest file it may write
    open_files: int = 256
    files_bytes: int = 1_000_000  # total size of the working folder's files handed back

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise HerdError(f"sandbox limit {name} must be > 0, got {value!r}")


@dataclass
class RunResult:
    """One run: its output, how it ended, and how well it was isolated."""

    stdout: str
    stderr: str
    exit_code: int  # negative: killed by that signal (subprocess's convention)
    timed_out: bool
    killed_reason: str | None  # "timeout" | "cpu" | "memory" | "output" | None
    seconds: float
    truncated: bool
    files: dict[str, bytes] = field(default_factory=dict)  # new or changed, in the working folder
    files_omitted: list[str] = field(default_factory=list)  # past limits.files_bytes
    network_isolation: str = "unknown"  # "namespace" | "userns" | "python-guard"
    readonly_fs: bool = False  # everything but the working folder was read-only
    uid: int = -1  # the uid the code ran as, seen from outside
    cpu_seconds: float | None = None
    notes: list[str] = field(default_factory=list)  # where isolation fell short
    limits: Limits = field(default_factory=Limits)

    def to_tool_text(self) -> str:
        """What the model sees in the `ipython` role: stdout, the tail of stderr (an exception's
        traceback), then one bracketed note when the run was killed, truncated or wrote files."""
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        tail = self.stderr.rstrip("\n").splitlines()[-30:]
        if tail:
            parts.append("\n".join(tail)[-4000:])
        lim = self.limits
        why = {
            "timeout": f"killed: wall-clock limit of {lim.wall_seconds:g} s reached",
            "cpu": f"killed: CPU time limit of {lim.cpu_seconds:g} s reached",
            "memory": f"out of memory: the limit is {lim.memory_mb} MB",
            "output": f"killed: output passed {lim.output_bytes} bytes, the rest is cut",
        }
        if self.killed_reason:
            parts.append(f"[{why[self.killed_reason]}]")
        elif self.truncated:
            parts.append("[output truncated]")
        elif self.exit_code != 0 and not tail:
            parts.append(f"[exit code {self.exit_code}]")
        if self.files:
            parts.append(
                "[files: " + ", ".join(f"{n} ({len(b)} bytes)" for n, b in self.files.items()) + "]"
            )
        if self.files_omitted:
            parts.append("[too large to return: " + ", ".join(self.files_omitted) + "]")
        return "\n".join(parts) or "[no output]"


def run_python(
    code: str,
    limits: Limits | None = None,
    files: dict[str, bytes] | None = None,
    *,
    isolation: str = "auto",
) -> RunResult:
    """Run `code` as `main.py` in a fresh working folder holding `files` (relative paths); return
    its output and the files it wrote. `isolation="python-guard"` skips the namespaces (for hosts
    where creating them is forbidden or audited, and for tests of that path)."""
    limits = limits or Limits()
    if isolation not in ("auto", "python-guard"):
        raise HerdError(f"sandbox isolation must be 'auto' or 'python-guard', got {isolation!r}")
    work = os.path.realpath(tempfile.mkdtemp(prefix="herd-sandbox-"))
    try:
        inputs = {**_checked_files(files or {}), PROGRAM: code.encode()}
        for name, data in inputs.items():
            (Path(work) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(work) / name).write_bytes(data)
        if os.geteuid() == 0:  # the code will run as nobody; it must own its folder
            for folder, dirs, names in os.walk(work):
                for name in [folder, *(os.path.join(folder, n) for n in dirs + names)]:
                    os.lchown(name, NOBODY, NOBODY)
        result = _run(work, limits, isolation)
        result.files, result.files_omitted = _collect(work, inputs, limits.files_bytes)
        return result
    finally:
        _remove(work)


def _checked_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """The names as normalised relative paths ("./a.txt" is "a.txt"), none of them main.py."""
    checked = {}
    for name, data in files.items():
        path = Path(name)
        if path.is_absolute() or ".." in path.parts or path.as_posix() in (".", PROGRAM):
            raise HerdError(
                f"sandbox file name {name!r} must be a relative path inside the folder, not {PROGRAM}"
            )
        checked[path.as_posix()] = bytes(data)
    return checked


# The launcher's command line: confine.py loaded by path into `python -I -S` (no site-packages, no
# environment variables, neither the working folder nor herd on sys.path: it imports only the
# standard library), then `launch(config)`.
_BOOT = (
    "import sys, importlib.util as u\n"
    "s = u.spec_from_file_location('herd_sandbox_launcher', sys.argv[2])\n"
    "m = sys.modules[s.name] = u.module_from_spec(s)\n"
    "s.loader.exec_module(m)\n"
    "m.launch(sys.argv[1])\n"
)


def _run(work: str, limits: Limits, isolation: str) -> RunResult:
    python = sys.executable
    base = [python, "-E", "-s", "-B", "-u", "-X", "utf8"]
    status_r, status_w = os.pipe()
    cfg = {
        "work": work,
        "isolation": isolation,
        "status_fd": status_w,
        "argv": [*base, PROGRAM],
        "guard_argv": [*base, "-c", guard_source(), work],  # when namespaces fail or are skipped
        "keep": _python_dirs(),
        "hidden": [*HIDDEN, os.path.expanduser("~")],
        "rlimits": _rlimits(limits),
        "processes": limits.processes,
    }
    launcher = str(Path(__file__).resolve().with_name("confine.py"))
    cmd = [python, "-I", "-S", "-B", "-c", _BOOT, json.dumps(cfg), launcher]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            env=_environment(work, python),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,  # one process group: what a kill takes down
        )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    out, err, status, reason = _read(
        proc, status_r, start + limits.wall_seconds, limits.output_bytes
    )
    seconds = time.monotonic() - start
    lines = [json.loads(line) for line in status.decode().splitlines() if line.startswith("{")]
    if lines and "error" in lines[0]:
        raise HerdError(f"sandbox could not start: {lines[0]['error']}")
    if not lines and reason is None:
        last = (err.decode(errors="replace").strip().splitlines() or ["no report"])[-1]
        raise HerdError(f"sandbox could not start: {last[-300:]}")
    setup = lines[0] if lines else {}
    end = lines[1] if len(lines) > 1 else {}
    exit_code = os.waitstatus_to_exitcode(end["wait_status"]) if end else proc.returncode
    # tracebacks name main.py, not the temporary folder the model never saw
    stderr = err.decode(errors="replace").replace(f'File "{work}/', 'File "')
    cpu = end.get("cpu_seconds")
    if reason is None and exit_code == -signal.SIGXCPU:
        reason = "cpu"
    elif reason is None and exit_code == -signal.SIGKILL and cpu and cpu >= limits.cpu_seconds:
        reason = "cpu"  # past the hard limit, a second after SIGXCPU
    elif reason is None and exit_code != 0 and _MEMORY.search("\n".join(stderr.splitlines()[-3:])):
        reason = "memory"
    result = RunResult(
        stdout=out.decode(errors="replace"),
        stderr=stderr,
        exit_code=exit_code,
        timed_out=reason == "timeout",
        killed_reason=reason,
        seconds=seconds,
        truncated=reason == "output",
        network_isolation=setup.get("network", "unknown"),
        readonly_fs=setup.get("readonly_fs", False),
        uid=setup.get("uid", -1),
        cpu_seconds=cpu,
        notes=setup.get("notes", []),
        limits=limits,
    )
    if result.network_isolation == "python-guard" and not _warned:
        _warned.append(True)
        _log.warning("sandbox ran with the python-guard only (no namespaces): %s", result.notes)
    return result


_MEMORY = re.compile(r"^MemoryError|std::bad_alloc|Cannot allocate memory", re.M)


def _read(proc: subprocess.Popen, status_r: int, deadline: float, cap: int):
    """Read stdout, stderr and the launcher's status pipe as they come, never holding more than
    `cap` bytes of output; kill the process group at the deadline or past the cap."""
    sel = selectors.DefaultSelector()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray(), status_r: bytearray()}
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    reason, used = None, 0
    while sel.get_map() and reason is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "timeout"
            break
        for key, _ in sel.select(remaining):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
            elif key.fd == status_r:
                bufs[status_r] += chunk[: 65536 - len(bufs[status_r])]
            else:
                bufs[key.fd] += chunk[: max(0, cap - used)]
                used += len(chunk)
                if used > cap:
                    reason = "output"
    if reason:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # what the status pipe still holds (the launcher's report), briefly: orphans of the
        # python-guard path may keep the pipes open forever
        while status_r in sel.get_map() and select.select([status_r], [], [], 0.2)[0]:
            chunk = os.read(status_r, 65536)
            if not chunk:
                break
            bufs[status_r] += chunk[: 65536 - len(bufs[status_r])]
    sel.close()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    os.close(status_r)
    return bufs[out_fd], bufs[err_fd], bufs[status_r], reason


def _environment(work: str, python: str) -> dict[str, str]:
    """Only these: nothing of ours (API keys, tokens, proxies) reaches the code."""
    return {
        "PATH": f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "TMPDIR": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MPLBACKEND": "Agg",
        # one thread each: threads count as processes, and BLAS pools reserve memory per thread
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _rlimits(limits: Limits) -> dict[str, list[int]]:
    cpu = math.ceil(limits.cpu_seconds)
    data = limits.memory_mb << 20
    return {
        "RLIMIT_CPU": [cpu, cpu + 1],  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_DATA": [data, data],
        "RLIMIT_AS": [4 * data, 4 * data],
        "RLIMIT_FSIZE": [limits.file_bytes, limits.file_bytes],
        "RLIMIT_NOFILE": [limits.open_files, limits.open_files],
        "RLIMIT_CORE": [0, 0],
    }


def _python_dirs() -> list[str]:
    """The Python installation the code runs on: bound back into the mount view if it lies under a
    hidden folder (a pyenv under /root, a venv under /home)."""
    dirs = sorted(
        {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
        | {os.path.dirname(os.path.realpath(sys.executable))}
    )
    return [d for d in dirs if not any(d.startswith(k + "/") for k in dirs)]


def _collect(work: str, inputs: dict[str, bytes], cap: int) -> tuple[dict[str, bytes], list[str]]:
    """The working folder's regular files that are new or changed, up to `cap` bytes in all. Hidden
    folders (.cache, .config: libraries' caches under HOME) are skipped; links are never followed."""
    found, omitted, total = {}, [], 0
    for folder, dirs, names in os.walk(work):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, work)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    continue
                if total + info.st_size > cap:
                    omitted.append(rel)
                    continue
                data = f.read(cap - total + 1)
            if len(data) > cap - total:
                omitted.append(rel)
            elif inputs.get(rel) != data:
                found[rel], total = data, total + len(data)
    return found, omitted


def _remove(work: str) -> None:
    def unlock(func, path, _exc):  # the code may have taken its own permissions away
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(work, onexc=unlock)
    else:
        shutil.rmtree(work, onerror=unlock)
