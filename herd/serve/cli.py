"""`herd serve CHECKPOINT`: the OpenAI-compatible server on uvicorn.

The server answers as soon as it listens (GET /health is 503 until the model is loaded), loads the
checkpoint, then serves: uvicorn on a thread of its own, the engine on the main thread. SIGTERM
(or Ctrl-C) drains: new requests get 503, requests in flight run to completion for up to
--drain-timeout seconds, then the server exits; a second signal exits at once.

With --guard a safety guard loads after the model (same --device and --dtype) and checks each
request and reply (herd/guard/moderator.py, herd/serve/moderation.py); its decisions are logged
on stderr. `herd chat` takes the same guard options (herd/guard/cli.py `add_guard_options`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from herd import options
from herd.agent.repl import add_agent_options
from herd.errors import HerdError
from herd.guard.cli import add_guard_options, guard_policy

_LOCAL = ("127.0.0.1", "localhost", "::1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder with a tokenizer")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; anything else without "
        "an API key prints a warning)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/ routes (visible in the process list; "
        "prefer --api-key-file)",
    )
    key.add_argument(
        "--api-key-file", metavar="FILE", help="read the API key from the first line of FILE"
    )
    p.add_argument(
        "--max-batch",
        type=options.positive_int,
        default=8,
        metavar="N",
        help="requests decoded together; each holds a KV-cache row of --max-model-len (default 8)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        metavar="N",
        help="requests waiting for a batch slot; beyond it a request gets HTTP 429 (default 64)",
    )
    p.add_argument(
        "--max-model-len",
        type=options.positive_int,
        default=None,
        metavar="T",
        help="longest prompt + completion in tokens, which sizes the KV cache (default: the "
        "model's context)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=options.positive_int,
        default=256,
        metavar="T",
        help="prompt tokens prefilled per engine step; smaller keeps running streams smoother "
        "while long prompts arrive (default 256)",
    )
    p.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        help="prefill every prompt whole instead of reusing the KV of a prompt prefix a slot "
        "already holds (a shared system prompt, an earlier turn); for measuring what the prefix "
        "cache saves",
    )
    p.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model id clients send and /v1/models lists (default: the checkpoint's folder "
        "name)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step over all --max-batch rows at fixed shapes (on CUDA a CUDA "
        "graph); costs compilation time at the first request",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds to let requests in flight finish before exiting (default 30)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=1,
        metavar="N",
        help="a vision model's (Llama 3.2 Vision) most pictures per chat request; more is HTTP "
        "400. Each KV slot reserves room for N images' cross-attention keys and values "
        "(default 1)",
    )
    p.add_argument(
        "--allowed-local-media-path",
        metavar="DIR",
        help="let image_url and video_url parts name files (or, for videos, frame folders) "
        "under DIR (file:///DIR/x.png or /DIR/x.png); "
        "without it only data: URLs are taken. http(s) URLs are always refused: the server "
        "makes no outbound requests",
    )
    add_guard_options(p)
    options.add_device(p)
    options.add_threads(p, "the model")
    agent = p.add_argument_group(
        "agent",
        "with --agent, a second model name runs herd's agent (`herd agent`): BB3 modules, "
        "search, long-term memory, tools; the options below are `herd agent`'s",
    )
    agent.add_argument(
        "--agent",
        action="store_true",
        help="serve the agent as a second model (named by --agent-name) and POST "
        "/v1/agent/feedback for ratings; memory is per request `user`",
    )
    agent.add_argument(
        "--agent-name", metavar="NAME", help="the agent's model name (default: <model name>-agent)"
    )
    add_agent_options(agent, serve=True)


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return args.api_key
    try:
        key = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        raise HerdError(f"--api-key-file {args.api_key_file}: cannot read a key from it") from None
    if not key:
        raise HerdError(f"--api-key-file {args.api_key_file}: the first line is empty")
    return key


def run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from herd.checkpoint.convert import detect_format
    from herd.serve.app import ServerState, create_app

    key = _api_key(args)
    if args.max_queue < 0:
        raise HerdError(f"--max-queue {args.max_queue}: expected at least 0")
    if args.max_images < 0:
        raise HerdError(f"--max-images {args.max_images}: expected at least 0")
    local_media = None
    if args.allowed_local_media_path is not None:
        local_media = Path(args.allowed_local_media_path).resolve()
        if not local_media.is_dir():
            raise HerdError(f"--allowed-local-media-path {local_media}: not a folder")
    detect_format(Path(args.checkpoint))  # a missing checkpoint fails before the server starts
    policy = guard_policy(args)  # and so does a missing guard
    agent_parts = _agent_parts(args)  # and a bad agent option
    if args.host not in _LOCAL and key is None:
        sys.stderr.write(
            f"herd serve: warning: listening on {args.host} without --api-key: anyone who can "
            "reach this port can use the model\n"
        )
    name = args.served_model_name or Path(args.checkpoint).resolve().name
    state = ServerState(name, key)
    state.local_media = local_media
    config = uvicorn.Config(
        create_app(state), host=args.host, port=args.port, timeout_graceful_shutdown=5
    )
    server = draining_server(config, state, args.drain_timeout)
    # The engine runs on the main thread (engine.py says why) and uvicorn on this one. uvicorn
    # installs signal handlers only on the main thread, so the main thread takes them here.
    http = threading.Thread(target=server.run, name="herd-http", daemon=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    http.start()
    while not server.started and http.is_alive():
        time.sleep(0.02)
    if not server.started:
        raise HerdError(f"cannot listen on {args.host}:{args.port} (see the error above)")
    try:
        from herd.guard.moderator import load_moderator

        engine = _load_engine(args, state)
        state.moderator = load_moderator(args, policy, state.metrics)
    except Exception as e:
        server.should_exit = True
        http.join()
        raise e if isinstance(e, HerdError) else HerdError(f"{type(e).__name__}: {e}") from e
    if state.moderator is not None:
        _log_guard_decisions()
    if agent_parts is not None:
        from herd.agent.llm import check_chat_tokenizer
        from herd.serve.agent import AgentService

        check_chat_tokenizer(engine.tokenizer)
        agent_name = args.agent_name or f"{name}-agent"
        state.agent = AgentService(args, agent_name, *agent_parts, state.moderator)
    state.set_engine(engine)
    logging.getLogger("uvicorn.error").info("model '%s' loaded; serving", state.model_name)
    # when the server stops (drained, or a second signal), so does the engine loop below
    threading.Thread(target=lambda: (http.join(), engine.shutdown()), daemon=True).start()
    engine.run()
    http.join()


def _agent_parts(args):
    """(search, toolbox) of --agent, checked before the model loads; None without --agent."""
    if not args.agent:
        return None
    if args.director is not None:
        raise HerdError("--director: Director decoding runs in `herd agent`, not in the server")
    from herd.agent.memory import MemoryStore
    from herd.agent.repl import open_parts

    parts = open_parts(args)
    MemoryStore(args.memory).close()  # a bad --memory file fails now, not on the first request
    return parts


def _load_engine(args, state):
    import torch

    from herd.checkpoint.loading import load_for_command
    from herd.serve.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, _ = load_for_command(
        args.checkpoint, args.device, args.dtype, tokenizer_needed="to serve text"
    )
    return Engine(
        model,
        tok,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_model_len=args.max_model_len,
        prefill_chunk=args.prefill_chunk,
        compile=args.compile,
        metrics=state.metrics,
        prefix_cache=args.prefix_cache,
        max_images=args.max_images,
    )


def _log_guard_decisions() -> None:
    """The guard's decision lines (herd.guard, INFO) on stderr, as uvicorn writes its own."""
    log = logging.getLogger("herd.guard")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     guard %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def draining_server(config, state, drain_timeout: float):
    """uvicorn's Server, whose first exit signal drains instead of stopping at once: /v1/ routes
    answer 503 while the engine finishes what it holds, then the server stops."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if state.draining or state.engine is None:
                return super().handle_exit(sig, frame)
            state.draining = True
            threading.Thread(target=self._drain, daemon=True).start()

        def _drain(self) -> None:
            deadline = time.monotonic() + drain_timeout
            while time.monotonic() < deadline and any(state.engine.counts()):
                time.sleep(0.05)
            self.should_exit = True

    return DrainingServer(config)
