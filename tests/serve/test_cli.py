"""`herd serve` as a process: --help, health while loading, a request, SIGTERM exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serve.conftest import free_port


def wait_until_healthy(url: str, timeout: float = 120) -> None:
    """Poll GET /health until the server answers 200 (the model is loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def test_help_explains_every_option():
    from herd.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    for action in serve._actions:
        assert action.help, action.dest


def test_serve_process_answers_and_drains_on_sigterm(checkpoint, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "serve", str(checkpoint), "--port", str(port),
         "--api-key-file", str(key), "--served-model-name", "tiny", "--device", "cpu",
         "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url)
        r = httpx.post(
            url + "/v1/completions",
            json={"model": "tiny", "prompt": "The", "max_tokens": 3},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_checkpoint_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "herd", "serve", str(tmp_path / "nope")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_port_in_use_is_an_error_naming_it(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "herd", "serve", str(checkpoint), "--port", str(port)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
            timeout=120,
        )  # fmt: skip
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr.strip().splitlines()[-1]


def _rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_overload_answers_429_and_memory_stays_bounded(checkpoint):
    """Bursts far beyond --max-queue: the excess gets 429 at once, and the server's resident
    memory after the third burst is within a few MB of the first's (nothing queues up unbounded)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "serve", str(checkpoint), "--port", str(port),
         "--max-batch", "2", "--max-queue", "4", "--device", "cpu", "--threads", "1"],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url)

        async def burst(n: int) -> list[int]:
            limits = httpx.Limits(max_connections=n)
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
                body = {"model": "tiny", "prompt": "The quick brown fox " * 20, "max_tokens": 8}

                async def one() -> int:
                    return (await client.post("/v1/completions", json=body)).status_code

                return await asyncio.gather(*(one() for _ in range(n)))

        rss = []
        for _ in range(3):
            codes = asyncio.run(burst(150))
            assert set(codes) <= {200, 429} and codes.count(429) >= 100 and codes.count(200) >= 4
            rss.append(_rss_mb(proc.pid))
        assert rss[2] - rss[0] < 16, rss
        assert httpx.get(url + "/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
