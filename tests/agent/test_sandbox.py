"""The code_interpreter sandbox: limits, kills, no network, no writes outside its folder, no secrets.

Most tests run both isolation paths that this machine can take: "auto" (network, mount and PID
namespaces: "namespace" as root, "userns" otherwise) and the forced "python-guard" fallback. One test
runs the sandbox as an unprivileged user (uid 65534, dropped to from root in a child process)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from herd.agent.sandbox import Limits, RunResult, run_python
from herd.errors import HerdError

REPO = Path(__file__).resolve().parents[2]
BOTH = pytest.mark.parametrize("isolation", ["auto", "python-guard"])
FAST = Limits(cpu_seconds=2, wall_seconds=5)


def _run(code: str, isolation: str = "auto", **kwargs) -> RunResult:
    return run_python(
        textwrap.dedent(code), kwargs.pop("limits", FAST), isolation=isolation, **kwargs
    )


def _marked(marks: list[str]) -> list[int]:
    """Host processes (zombies aside) whose command line holds one of `marks`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if entry.name.isdigit() and any(m in argv for m in marks):
            found.append(int(entry.name))
    return found


def _all_gone(marks: list[str], pids: list[int] = ()) -> bool:
    """Poll briefly: killed processes may stay a moment until their new parent reaps them."""
    deadline = time.monotonic() + 3
    while _marked(marks) or any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@BOTH
def test_output_and_exception_tail(isolation):
    r = _run("print('hello', 6 * 7)\ndef f():\n    raise ValueError('boom')\nf()\n", isolation)
    assert r.stdout == "hello 42\n"
    assert r.exit_code == 1 and r.killed_reason is None and not r.timed_out
    assert 'File "main.py", line 3, in f' in r.stderr and r.stderr.endswith("ValueError: boom\n")
    assert "_guard_main" not in r.stderr  # the guard's own frame is not shown
    text = r.to_tool_text()
    assert text.startswith("hello 42\nTraceback") and text.endswith("ValueError: boom")
    assert run_python("x = 1").to_tool_text() == "[no output]"
    assert "[exit code 3]" in run_python("raise SystemExit(3)").to_tool_text()


def test_auto_isolation_is_namespaces_here():
    r = _run(
        "import os, numpy\nprint(numpy.arange(4).sum(), os.getpid(), os.listdir('/proc').count('1'))"
    )
    assert r.stdout == "6 2 1\n"  # PID 2 (after its init), in a /proc of its own namespace
    expected = "namespace" if os.geteuid() == 0 else "userns"
    assert (r.network_isolation, r.readonly_fs, r.notes) == (expected, True, [])
    assert r.uid == (65534 if os.geteuid() == 0 else os.geteuid())


def _marks() -> list[str]:
    # `sleep 1000.<random>`: processes the test can find among the host's, whatever PID namespace
    return [f"{1000 + random.random():.9f}" for _ in range(2)]


def test_wall_timeout_kills_every_descendant():
    marks = _marks()
    code = f"""
    import os, subprocess, time
    subprocess.Popen(["sleep", "{marks[0]}"])
    if os.fork() == 0:
        os.setsid()  # leaves the process group: a killpg alone would miss it
        os.execv("/bin/sleep", ["sleep", "{marks[1]}"])
    time.sleep(0.3)
    print(sum(open(f"/proc/{{p}}/cmdline").read().startswith("sleep")
              for p in os.listdir("/proc") if p.isdigit()), flush=True)
    time.sleep(100)
    """
    r = _run(code, limits=Limits(wall_seconds=2))
    assert (r.timed_out, r.killed_reason, r.exit_code) == (True, "timeout", -signal.SIGKILL)
    assert 1.9 < r.seconds < 4
    assert r.stdout == "2\n"  # both sleeps were running
    assert _all_gone(marks), _marked(marks)
    assert "wall-clock limit of 2 s" in r.to_tool_text()


@BOTH
def test_leftover_processes_die_with_the_code(isolation):
    marks = _marks()
    code = f"""
    import os, time
    if os.fork() == 0:
        os.setsid()
        try:
            os.execv("/bin/sleep", ["sleep", "{marks[0]}"])
        except PermissionError:  # the python-guard refuses exec: sleep here, and say where
            print(os.getpid(), flush=True)
            time.sleep(100)
    time.sleep(0.3)
    """
    r = _run(code, isolation)
    assert r.exit_code == 0 and r.seconds < 3, r.stderr
    assert (r.stdout != "") is (isolation == "python-guard")
    assert _all_gone(marks, [int(p) for p in r.stdout.split()])


def test_cpu_limit():
    r = _run("while True:\n    pass\n", limits=Limits(cpu_seconds=1, wall_seconds=8))
    assert (r.killed_reason, r.timed_out, r.exit_code) == ("cpu", False, -signal.SIGXCPU)
    assert r.cpu_seconds is not None and r.cpu_seconds >= 0.9
    assert "CPU time limit of 1 s" in r.to_tool_text()


@BOTH
def test_memory_limit(isolation):
    r = _run(
        "b = bytearray(2 * 1024**3)\nprint('allocated')", isolation, limits=Limits(memory_mb=256)
    )
    assert r.killed_reason == "memory" and r.stdout == ""
    assert r.stderr.rstrip().endswith("MemoryError")
    assert "the limit is 256 MB" in r.to_tool_text()
    # within the limit, numpy works (its import and BLAS threads fit)
    ok = _run("import numpy as np\nprint(np.ones((1000, 1000)).sum())", isolation)
    assert ok.stdout == "1000000.0\n", ok.stderr


def test_output_cap():
    r = _run("while True:\n    print('x' * 999)\n", limits=Limits(output_bytes=10_000))
    assert (r.killed_reason, r.truncated) == ("output", True)
    assert len(r.stdout) == 10_000 and set(r.stdout) == {"x", "\n"}
    assert r.to_tool_text().endswith("[killed: output passed 10000 bytes, the rest is cut]")
    big = _run("print('y' * 50_000_000)", limits=Limits(output_bytes=1000))
    assert big.truncated and big.stdout == "y" * 1000


@pytest.fixture
def tcp_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    probe = socket.create_connection(server.getsockname(), timeout=2)  # reachable from here
    server.accept()[0].close()
    probe.close()
    yield server
    server.close()


NETWORK_CODE = """
import json, socket
tries = {}
for name, address in [("local", ("127.0.0.1", PORT)), ("external", ("1.1.1.1", 53))]:
    try:
        socket.create_connection(address, timeout=1).close()
        tries[name] = "connected"
    except OSError as e:
        tries[name] = f"{type(e).__name__}: {e}"
try:
    tries["dns"] = str(socket.getaddrinfo("example.com", 443))
except OSError as e:
    tries["dns"] = f"{type(e).__name__}: {e}"
print(json.dumps(tries))
"""


@BOTH
def test_no_network(isolation, tcp_server):
    port = tcp_server.getsockname()[1]
    r = _run(NETWORK_CODE.replace("PORT", str(port)), isolation)
    tries = json.loads(r.stdout)
    assert set(tries) == {"local", "external", "dns"}, r.stderr
    assert not any(v == "connected" or v.startswith("[(") for v in tries.values()), tries
    if isolation == "python-guard":
        assert all("sandbox: socket" in v for v in tries.values()), tries
    else:
        assert "unreachable" in tries["local"].lower(), tries
    with pytest.raises(BlockingIOError):
        tcp_server.accept()  # nothing came in


WRITE_CODE = """
import json, os
done = {}
for path in ["OUTSIDE/escaped.txt", "inside.txt", "sub/nested.txt", "/etc/herd-sandbox-test"]:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write("data")
        done[path] = "written"
    except OSError as e:
        done[path] = f"{type(e).__name__}: {e}"
done["root_readonly"] = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
done["cwd"] = os.getcwd()
print(json.dumps(done))
"""


@BOTH
def test_no_writes_outside_the_folder(isolation, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)  # so that only the sandbox, not file permissions, stands in the way
    r = _run(WRITE_CODE.replace("OUTSIDE", str(outside)), isolation)
    done = json.loads(r.stdout)
    assert done["inside.txt"] == done["sub/nested.txt"] == "written"
    assert done[f"{outside}/escaped.txt"] != "written" and not (outside / "escaped.txt").exists()
    assert done["/etc/herd-sandbox-test"] != "written"
    assert not Path("/etc/herd-sandbox-test").exists()
    assert r.files == {"inside.txt": b"data", "sub/nested.txt": b"data"}
    assert done["root_readonly"] is (isolation == "auto")
    assert not os.path.exists(done["cwd"])  # the working folder is gone


def test_environment_has_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-herd-test-secret")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    r = _run("import os, sys\nprint(dict(os.environ))\nprint(os.environ['HOME'] == os.getcwd())")
    assert "sk-herd-test-secret" not in r.stdout and "OPENAI" not in r.stdout
    assert "PYTHONPATH" not in r.stdout and r.stdout.endswith("True\n")


def test_files_in_and_out():
    files = {"helper.py": b"def answer():\n    return 42\n", "data/in.csv": b"1,2\n3,4\n"}
    code = """
    import helper, os
    rows = [list(map(int, line.split(","))) for line in open("data/in.csv")]
    os.makedirs("out")
    open("out/sum.txt", "w").write(str(sum(map(sum, rows)) + helper.answer()))
    open("big.bin", "wb").write(b"0" * 5000)
    os.makedirs(".cache/x")
    open(".cache/x/junk", "w").write("cache")
    os.symlink("/etc/hostname", "link")
    """
    r = _run(code, files=files, limits=Limits(files_bytes=4000))
    assert r.exit_code == 0, r.stderr
    assert r.files == {"out/sum.txt": b"52"} and r.files_omitted == ["big.bin"]
    assert "[files: out/sum.txt (2 bytes)]" in r.to_tool_text()
    changed = _run("open('data/in.csv', 'a').write('5,6\\n')", files=files)
    big = _run("open('f', 'wb').write(b'0' * 20_000)", limits=Limits(file_bytes=10_000))
    assert "OSError: [Errno 27] File too large" in big.stderr
    assert changed.files == {"data/in.csv": b"1,2\n3,4\n5,6\n"}


def test_bad_file_names_and_limits():
    for name in ["/etc/passwd", "../x", "a/../../x", "main.py", "./main.py", ""]:
        with pytest.raises(HerdError, match="relative path"):
            run_python("pass", files={name: b""})
    with pytest.raises(HerdError, match="cpu_seconds"):
        Limits(cpu_seconds=0)
    with pytest.raises(HerdError, match="isolation"):
        run_python("pass", isolation="none")


def test_folder_removed_even_when_locked():
    code = "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('')\nos.chmod('a', 0)\n"
    r = _run(code + "print(os.getcwd())")
    assert r.exit_code == 0, r.stderr
    assert not os.path.exists(r.stdout.strip())


def test_process_limit():
    code = """
    import threading, time
    started = 0
    for _ in range(40):
        try:
            threading.Thread(target=time.sleep, args=(1,)).start()
            started += 1
        except RuntimeError:
            break
    print(started)
    """
    r = _run(code, limits=Limits(processes=8))
    assert r.exit_code == 0, r.stderr
    assert 4 <= int(r.stdout) <= 7  # the main thread is one of the eight


def test_python_guard_refuses_subprocesses_and_ctypes():
    code = """
    import subprocess, ctypes
    for attempt in (lambda: subprocess.run(["true"]), lambda: ctypes.CDLL(None).getpid()):
        try:
            attempt()
        except PermissionError as e:
            print(e)
    """
    r = _run(code, "python-guard")
    assert r.stdout.splitlines() == [
        "sandbox: subprocess.Popen is not allowed",
        "sandbox: ctypes.dlsym is not allowed",
    ]
    assert r.network_isolation == "python-guard" and not r.readonly_fs


UNPRIVILEGED = """
import json, os, sys
from herd.agent import confine, sandbox

if os.geteuid() == 0:
    # Give nobody what any user who runs the sandbox has: a Python it can execute. Here the venv's
    # base Python lies under /root (0700), so it is bound into a tmpfs over /root, in a mount
    # namespace of this process only.
    if not confine._nobody_can_run(sys.executable):
        assert confine._libc().unshare(confine._NEWNS) == 0
        assert confine._mount(None, "/", None, confine._MS_REC | confine._MS_PRIVATE, None) == 0
        dirs = [d for d in sandbox._python_dirs() if d.startswith("/root/")]
        fds = [os.open(d, os.O_PATH) for d in dirs]
        assert confine._mount("tmpfs", "/root", "tmpfs", 0, "mode=0755") == 0
        for d, fd in zip(dirs, fds):
            os.makedirs(d)
            bind = confine._MS_BIND | confine._MS_REC
            assert confine._mount(f"/proc/self/fd/{fd}", d, None, bind, None) == 0
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    confine._prctl(confine._PR_SET_DUMPABLE, 1)  # so that it may write its own userns maps
if sys.argv[2] == "exhausted":
    # user namespaces nest 32 deep at most: past that, this process and its children cannot
    # create one, as where they are switched off (sysctl) or forbidden (AppArmor, seccomp)
    for _ in range(40):
        if not confine._enter_userns(0, []):
            break
probe = os.fork()
if probe == 0:  # may this user create a user namespace at all?
    os._exit(0 if confine._libc().unshare(confine._NEWUSER) == 0 else 1)
userns = os.waitpid(probe, 0)[1] == 0
r = sandbox.run_python(sys.argv[1], sandbox.Limits(cpu_seconds=2, wall_seconds=5))
print(json.dumps({"userns": userns, "uid": os.getuid(), "result": vars(r) | {"files": {}, "limits": None}}))
"""


@pytest.mark.parametrize("userns", ["allowed", "exhausted"])
def test_as_unprivileged_user(userns, tcp_server):
    outside = Path(tempfile.mkdtemp(prefix="herd-sandbox-test-"))
    try:
        outside.chmod(0o777)  # writable by the unprivileged user outside the sandbox
        code = (WRITE_CODE.replace("OUTSIDE", str(outside)) + NETWORK_CODE).replace(
            "PORT", str(tcp_server.getsockname()[1])
        )
        proc = subprocess.run(
            [sys.executable, "-c", UNPRIVILEGED, code, userns],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        r = report["result"]
        assert report["uid"] == (65534 if os.geteuid() == 0 else os.geteuid())
        assert userns == "allowed" or not report["userns"]  # where allowed, the probe says whether
        assert r["network_isolation"] == ("userns" if report["userns"] else "python-guard"), r
        assert r["readonly_fs"] is report["userns"], r["notes"]
        done, tries = map(json.loads, r["stdout"].splitlines())
        assert done["inside.txt"] == "written" and not (outside / "escaped.txt").exists(), done
        assert not any(v == "connected" or v.startswith("[(") for v in tries.values()), tries
    finally:
        for p in outside.iterdir():
            p.unlink()
        outside.rmdir()
