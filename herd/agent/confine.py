"""The sandbox's child side: the launcher that `sandbox.run_python` starts, and the init it forks.

`sandbox.py` is the caller's side (limits, the child's command line, output caps, the kill at the
deadline, the files handed back); this file is what runs in the child: the namespaces, the mount
view, the init that drops root and sets the limits, and the python-guard's audit hook (its source
is sent to the code's Python when namespaces fail or are skipped). It is a file of its own because
the launcher loads it by path into `python -I -S` (no site-packages, no environment, neither the
working folder nor herd on sys.path), so it may import the standard library only, no herd module;
kept apart from the caller's side, that stays easy to check.

Linux only (namespaces, prctl, /proc). The processes: a launcher (`launch`, in a process of its
own; never `preexec_fn`, which can deadlock a threaded server) enters the namespaces and forks the
sandbox's init, which drops root, sets the limits, forks and execs the code, reaps it and what it
left, and reports the exit status on a pipe of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import resource
import signal
import stat
import time
from pathlib import Path

NOBODY = 65534
# clone(2) and mount(2) flags, and prctl(2) options
_NEWNS, _NEWUSER, _NEWPID, _NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_REC, _MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
_MS_RELATIME, _MS_STRICTATIME = 1 << 21, 1 << 24
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
# hidden behind empty tmpfs when there is a mount namespace (the caller's home is added)
HIDDEN = ("/tmp", "/var/tmp", "/run", "/dev/shm", "/home", "/root")


def launch(config: str) -> None:
    """Enter the namespaces, then fork the sandbox's init, which confines itself and runs the code."""
    cfg = json.loads(config)
    status = os.fdopen(cfg["status_fd"], "w")
    os.set_inheritable(cfg["status_fd"], False)  # closed in the code's process at exec
    try:
        report = _isolate(cfg)
    except Exception as e:
        status.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        raise SystemExit(1) from None
    pid = os.fork()
    if pid == 0:
        try:
            _confine(cfg, report)
        except Exception as e:
            status.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
            status.flush()
            os._exit(1)
        status.write(json.dumps(report) + "\n")
        status.flush()
        guarded = report["network"] == "python-guard"
        _init(cfg["guard_argv"] if guarded else cfg["argv"], not guarded, status)
    os.waitpid(pid, 0)


def _isolate(cfg: dict) -> dict:
    """Namespaces and the mount view, where possible (as root: ours; else: in a user namespace)."""
    notes: list[str] = []
    guard_only = cfg["isolation"] == "python-guard"
    network, readonly = "python-guard", False
    if os.geteuid() == 0:
        if not guard_only and _unshare(_NEWNET | _NEWNS | _NEWPID, notes):
            network, readonly = "namespace", _mount_view(cfg, notes)
        elif _nobody_can_run(cfg["argv"][0]):
            _drop_root()
        else:
            notes.append("kept root: nobody cannot run this Python outside a mount namespace")
    if os.geteuid() != 0 and not guard_only and _enter_userns(_NEWNET | _NEWNS | _NEWPID, notes):
        network, readonly = "userns", _mount_view(cfg, notes)
    _prctl(_PR_SET_DUMPABLE, 0)  # the code, same uid, cannot ptrace us or read our memory
    return {"network": network, "readonly_fs": readonly, "notes": notes}


def _confine(cfg: dict, report: dict) -> None:
    """In the sandbox's init (PID 1 of its namespace, if any): a /proc of that namespace only (the
    host's would show other processes, other sandboxes' folders through /proc/PID/cwd), then root
    dropped, the limits set, and no privilege left to gain."""
    network = report["network"]
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if network != "python-guard" and (err := _mount("proc", "/proc", "proc", flags, None)):
        report["notes"].append(f"host /proc still visible: {os.strerror(err)}")
    # RLIMIT_NPROC counts every task of the uid. In a user namespace of our own, only those in it:
    # the launcher (userns path) and this init; elsewhere all the uid already runs.
    counted = 2 if network == "userns" else None
    if os.geteuid() == 0 and network == "namespace":
        _drop_root()
        counted = 1 if _enter_userns(0, report["notes"]) else None  # for that count alone
    report["uid"] = os.geteuid()
    counted = _tasks_of(os.getuid()) if counted is None else counted
    limits = cfg["rlimits"] | {"RLIMIT_NPROC": [counted + cfg["processes"]] * 2}
    for name, (soft, hard) in limits.items():
        res = getattr(resource, name)
        top = resource.getrlimit(res)[1]
        top = hard if top == resource.RLIM_INFINITY else min(hard, top)
        resource.setrlimit(res, (min(soft, top), top))
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # no setuid binaries (su, ping) for the code
    _prctl(_PR_SET_DUMPABLE, 0)


def _drop_root() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    _prctl(_PR_SET_DUMPABLE, 1)  # reset by the uid change; needed to write our own userns maps


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int, notes: list[str]) -> bool:
    if _libc().unshare(flags) == 0:
        return True
    notes.append(f"unshare({flags:#x}): {os.strerror(ctypes.get_errno())}")
    return False


def _enter_userns(flags: int, notes: list[str]) -> bool:
    """A new user namespace (plus `flags`) in which we keep our uid and gid."""
    uid, gid = os.geteuid(), os.getegid()
    if not _unshare(_NEWUSER | flags, notes):
        return False
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return True


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> int:
    enc = [s.encode() if s is not None else None for s in (source, target, fstype, data)]
    if _libc().mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) == 0:
        return 0
    return ctypes.get_errno()


def _mount_view(cfg: dict, notes: list[str]) -> bool:
    """Hide the shared and private folders, bind back the Python installation and the working
    folder, make every other mount read-only. True when every reachable mount became read-only."""
    work = cfg["work"]
    if err := _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None):  # nothing propagates back out
        notes.append(f"mount view: {os.strerror(err)}")
        return False
    os.umask(0o022)
    # opened before the hiding, in this namespace (a bind's source must be one of its mounts)
    keep = {p: os.open(p, os.O_PATH) for p in cfg["keep"] if os.path.isdir(p)}
    keep[work] = os.open(work, os.O_PATH)
    hidden = []
    for h in dict.fromkeys(os.path.realpath(h) for h in cfg["hidden"]):
        if h != "/" and os.path.isdir(h):
            if err := _mount("tmpfs", h, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=64k"):
                notes.append(f"{h} not hidden: {os.strerror(err)}")
            else:
                hidden.append(h)
    for path, fd in keep.items():
        if path == work or any(path.startswith(h + "/") for h in hidden):
            os.makedirs(path, exist_ok=True)
            if err := _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, None):
                raise OSError(err, f"binding {path} into the sandbox: {os.strerror(err)}")
        os.close(fd)
    os.chdir(work)  # the new bind, not the old directory under the soon read-only mount
    ok = True
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f]
    for point in points:
        if point == work or point == "/proc" or point.startswith("/proc/"):
            continue  # /proc stays writable: the user namespace entered after this writes its maps
        try:
            st = os.statvfs(point)
        except OSError:
            continue  # hidden or unreachable
        # keep the flags a user namespace locks (nosuid, nodev, noexec, atime), add read-only
        flags = (
            _MS_REMOUNT
            | _MS_BIND
            | _MS_RDONLY
            | (st.f_flag & (_MS_NOSUID | _MS_NODEV | _MS_NOEXEC))
        )
        if st.f_flag & os.ST_NODIRATIME:
            flags |= _MS_NODIRATIME
        if st.f_flag & os.ST_NOATIME:
            flags |= _MS_NOATIME
        else:
            flags |= _MS_RELATIME if st.f_flag & os.ST_RELATIME else _MS_STRICTATIME
        err = _mount(None, point, None, flags, None)
        if err and err not in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
            notes.append(f"{point} stays writable: {os.strerror(err)}")
            ok = False
    return ok


def _nobody_can_run(python: str) -> bool:
    path = os.path.realpath(python)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _tasks_of(uid: int) -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid:
            count += int(fields["Threads"])
    return count


def _prctl(option: int, value: int) -> None:
    _libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0)


def _init(argv: list[str], pid_namespace: bool, status) -> None:
    """The sandbox's init: fork the code, wait for it, kill whatever it left behind, report."""
    # the launcher killed: so are we, and with us the rest (set after _confine's uid change, which
    # clears it)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, not to the host's init
    child = os.fork()
    if child == 0:
        try:
            os.execv(argv[0], argv)
        except OSError as e:
            os.write(2, f"sandbox: cannot run {argv[0]}: {e}\n".encode())
        os._exit(127)
    while True:
        pid, wait_status, usage = os.wait4(-1, 0)
        if pid == child:
            break
    for _ in range(10_000):
        targets = [-1] if pid_namespace else _children()  # kill(-1) from init: its namespace only
        for target in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.005)
        except ChildProcessError:
            break
    status.write(
        json.dumps({"wait_status": wait_status, "cpu_seconds": usage.ru_utime + usage.ru_stime})
    )
    status.write("\n")
    status.flush()
    os._exit(0)


def _children() -> list[int]:
    me, found = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(pid))
    return found


# --- the python-guard: when namespaces fail or are skipped ----------------------------------------


@functools.cache
def guard_source() -> str:
    import inspect

    return inspect.getsource(_guard_main) + "\nimport sys\n_guard_main(sys.argv[1])\n"


def _guard_main(work: str) -> None:  # pragma: no cover (its source runs in the child)
    """The python-guard: run main.py under an audit hook. Sent as source text to the child."""
    import os
    import socket
    import sys
    import traceback

    root = os.path.realpath(work)
    refused = {
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.forkpty",
        "pty.spawn", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.connect",
        "socket.sendto", "socket.sendmsg", "socket.bind",
    }  # fmt: skip
    # event -> (index of a path it writes, index of that path's dir_fd or None)
    writes = {
        "os.mkdir": [(0, 2)], "os.rename": [(0, 2), (1, 3)], "os.remove": [(0, 1)],
        "os.rmdir": [(0, 1)], "os.symlink": [(1, 2)], "os.link": [(1, 3)], "os.chmod": [(0, 2)],
        "os.chown": [(0, 3)], "os.truncate": [(0, None)], "os.utime": [(0, 3)],
        "shutil.rmtree": [(0, 1)], "sqlite3.connect": [(0, None)],
    }  # fmt: skip
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path, dir_fd) -> bool:
        if isinstance(path, int):
            return True
        at = isinstance(dir_fd, int) and dir_fd >= 0  # the os module passes -1 for none
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if at else os.getcwd()
        real = os.path.realpath(os.path.join(base, os.fsdecode(path)))
        return real == root or real.startswith(root + os.sep) or real == "/dev/null"

    def hook(event, args):
        if event in refused or (event == "socket.__new__" and args[1] != socket.AF_UNIX):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args[0] is not None:
            mode, flags = args[1] or "", args[2] or 0
            if (any(c in mode for c in "wax+") or flags & writing) and not inside(args[0], None):
                raise PermissionError(f"sandbox: no writing outside the working folder: {args[0]}")
        for path, dir_fd in writes.get(event, ()):
            if not inside(args[path], None if dir_fd is None else args[dir_fd]):
                raise PermissionError(
                    f"sandbox: no writing outside the working folder: {args[path]}"
                )

    sys.addaudithook(hook)
    sys.argv = ["main.py"]
    with open("main.py", "rb") as f:
        code = compile(f.read(), "main.py", "exec")
    try:
        exec(code, {"__name__": "__main__", "__file__": os.path.join(root, "main.py")})
    except SystemExit:
        raise
    except BaseException as e:  # the traceback without this frame
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)
