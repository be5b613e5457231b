"""Serving benchmark: `herd serve` against `transformers serve` on the same weights and the same
load, over loopback, with streamed chat completions; and herd's prefix cache on a long shared
system prompt against herd with `--no-prefix-cache`.

Issue 21, speed section: throughput (generated tokens/s), time to first token and end-to-end
latency (p50, p99) and errors at 1, 4, 16 and 32 concurrent clients with a fixed mix of prompt and
output lengths; herd's aggregate tokens/s at 16 clients at least 4x its own at 1 client and at
least 2x `transformers serve`'s at 16, zero errors at every level; with a 1,000-token shared system
prompt, time to first token with the prefix cache at most a third of without.

    .venv/bin/python bench/serve.py                    # the full run (~15-20 minutes on 2 cores)
    .venv/bin/python bench/serve.py --quick            # tiny model, short requests: < 2 minutes
    .venv/bin/python bench/serve.py --threads 2 --out /tmp/serve.json
    .venv/bin/python bench/serve.py --stages prefix    # the prefix-cache comparison alone
    .venv/bin/python bench/serve.py --device cuda      # on a GPU (bench/gpu.sh runs this form)

Setup, built in a temporary folder: a byte-level BPE tokenizer (`herd.vocab.bpe.train_bpe`, Llama 3
chat format) trained on generated pseudo-words; a randomly initialised Llama-shaped herd checkpoint
(default dim 384, 6 layers, 6 query and 2 key/value heads, SwiGLU 1024, context 2048) saved with
`save_herd_folder`, and its Hugging Face export (`herd.checkpoint.convert.convert(...,
dst_format="hf")`: weights, tokenizer files, chat template, generation config), which `transformers
serve` loads. The output-layer rows of the end-of-turn tokens are zeroed before saving: their
logit is then 0 while the largest of the other (random) logits is positive, so greedy decoding
never ends a turn early on either server and every request generates exactly its max_tokens
(neither server takes an ignore_eos flag on /v1/chat/completions). The benchmark still counts
what each server reports in `usage.completion_tokens` and prints how many requests ended short.

Servers, each a subprocess on 127.0.0.1 at a free port, both up for the whole run:
- herd: `python -m herd serve HERD_CKPT --device D --dtype T --threads N --max-batch B` (the
  prefix cache on, eager decode; `--herd-args` appends options, e.g. `--compile`).
- peer: `transformers serve HF_DIR --continuous-batching --device D --dtype T` (transformers'
  paged-attention continuous batching, its fastest documented mode; without the flag it runs one
  `generate()` at a time; `--peer-args` appends options, `--peer-sequential` drops the flag), with
  `--cb-num-blocks` giving it herd's KV capacity (--max-batch x --context positions in pages of
  256; left to itself it sizes the cache from free memory, ~12 GB on a CPU machine). It is
  launched through `transformers.cli.transformers.app` rather than the `transformers` script,
  whose `main()` first asks PyPI for a newer version; HF_HUB_OFFLINE=1 keeps it off the network.
  It has no threads option: OMP_NUM_THREADS=N (both servers get it) sets torch's pool.

Load: for each level of concurrent clients (`--levels`, default 1,4,16,32), a fixed list of
max(`--min-requests`, clients x `--requests-per-client`) requests drawn with a seeded generator
from the mix (`--prompt-tokens` user prompts of about 64, 256 or 512 tokens of generated text;
`--max-tokens` 32, 64 or 128 to generate), taken from a shared queue by N asyncio clients (httpx),
each request a streamed /v1/chat/completions call with temperature 0 and stream_options
include_usage (transformers always sends usage and ignores the field). Both servers get the same
list. Per request: time to first token (the first chunk with content), end-to-end latency, the
completion tokens from usage; an error is a non-200 status, an error event in the stream, a
transport error or a stream without usage. Per level: aggregate generated tokens/s (all requests'
completion tokens over the level's wall time, first request sent to last stream closed), the p50
and p99 of both latencies, errors. Before measuring, `--warmup` requests go to each server at 4
clients, untimed (the peer sets up its continuous-batching manager on the first request). Each
level runs `--rounds` times per server, the servers taking turns (herd, peer, then peer, herd, ...)
so that what else loads the machine falls on both alike; a level's figures pool its rounds.

Prefix stage: a second herd server with `--no-prefix-cache`, the same checkpoint. A system prompt
of `--prefix-tokens` tokens (default 1,000) shared by every request, short user turns (about 16
tokens, each different) and `--prefix-max-tokens` 8; `--prefix-requests` requests per round from
`--prefix-clients` clients (default 1: TTFT then measures prefill, not queueing), `--rounds`
rounds, the two servers taking turns; an untimed round first on each, so the cached server starts
with the prefix in a slot (the steady state of a served system prompt) and neither pays a fresh
process's first-request costs (seconds on a loaded CPU) in the timed rounds. Printed: the median
TTFT of each and their ratio (target at most 1/3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import log  # bench/common.py, beside this script
from post_train import (  # the generated text post_train uses
    cpu_model,
    random_model,
    sentence,
    vocabulary,
)

# `transformers serve` without the version check its console script runs first (a PyPI request).
PEER_LAUNCH = (
    "import sys; from transformers.cli.transformers import app; sys.argv[0] = 'transformers'; app()"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both serve")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="both servers' weights and compute (default float32 on cpu, bfloat16 on cuda)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="CPU threads of each server (herd --threads, and OMP_NUM_THREADS for both)",
    )
    p.add_argument(
        "--stages",
        default="load,prefix",
        help="comma-separated: load (herd vs transformers serve), prefix (prefix cache on/off)",
    )
    m = p.add_argument_group("model (random weights, generated-text BPE tokenizer)")
    m.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary size asked for")
    m.add_argument("--dim", type=int, default=384, help="model width")
    m.add_argument("--layers", type=int, default=6, help="number of Transformer blocks")
    m.add_argument("--heads", type=int, default=6, help="query heads")
    m.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    m.add_argument("--ffn-dim", type=int, default=1024, help="SwiGLU hidden width")
    m.add_argument("--context", type=int, default=2048, help="the model's max_seq_len")
    m.add_argument("--seed", type=int, default=0, help="seed of the weights, text and request mix")
    s = p.add_argument_group("servers")
    s.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="herd serve --max-batch (requests decoded together; default 32, the top level)",
    )
    s.add_argument("--herd-args", default="", help="extra `herd serve` options, one string")
    s.add_argument("--peer-args", default="", help="extra `transformers serve` options, one string")
    s.add_argument(
        "--peer-sequential",
        action="store_true",
        help="run transformers serve without --continuous-batching (one generate() at a time)",
    )
    s.add_argument(
        "--startup-timeout", type=float, default=300, help="seconds for a server to become healthy"
    )
    lo = p.add_argument_group("load stage")
    lo.add_argument("--levels", default="1,4,16,32", help="concurrent clients, comma-separated")
    lo.add_argument(
        "--prompt-tokens", default="64,256,512", help="user-prompt lengths in the mix (tokens)"
    )
    lo.add_argument("--max-tokens", default="32,64,128", help="max_tokens values in the mix")
    lo.add_argument(
        "--requests-per-client", type=int, default=3, help="requests per client at each level"
    )
    lo.add_argument("--min-requests", type=int, default=8, help="requests at least, per level")
    lo.add_argument("--rounds", type=int, default=2, help="runs of each level per server")
    lo.add_argument("--warmup", type=int, default=8, help="untimed requests per server first")
    lo.add_argument(
        "--request-timeout", type=float, default=600, help="seconds before a request is an error"
    )
    px = p.add_argument_group("prefix stage")
    px.add_argument("--prefix-tokens", type=int, default=1000, help="shared system prompt tokens")
    px.add_argument("--prefix-requests", type=int, default=8, help="timed requests per round")
    px.add_argument("--prefix-clients", type=int, default=1, help="concurrent clients")
    px.add_argument("--prefix-max-tokens", type=int, default=8, help="max_tokens per request")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a dry run in about a minute: dim 128, 2 layers, levels 1,4,16, short requests, "
        "one round, a 1,000-token prefix with 3 requests",
    )
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.dim, args.layers, args.heads, args.kv_heads = 1024, 128, 2, 4, 2
        args.ffn_dim, args.max_batch = 384, 16
        args.levels, args.prompt_tokens, args.max_tokens = "1,4,16", "32,96", "16,32"
        args.requests_per_client, args.min_requests, args.rounds, args.warmup = 1, 4, 1, 2
        args.prefix_requests = 3
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    try:
        args.levels = [int(x) for x in args.levels.split(",")]
        args.prompt_tokens = [int(x) for x in args.prompt_tokens.split(",")]
        args.max_tokens = [int(x) for x in args.max_tokens.split(",")]
    except ValueError:
        p.error("--levels, --prompt-tokens and --max-tokens take comma-separated integers")
    args.stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    if not args.stages or set(args.stages) - {"load", "prefix"}:
        p.error("--stages: expected a comma-separated subset of load, prefix")
    if min(args.levels + args.prompt_tokens + args.max_tokens) < 1 or args.rounds < 1:
        p.error("levels, lengths and --rounds must be >= 1")
    longest = max(args.prompt_tokens) + max(args.max_tokens) + 64
    if max(longest, args.prefix_tokens + args.prefix_max_tokens + 64) > args.context:
        p.error("--context is too short for the longest prompt + max_tokens")
    return args


# --- model and prompts --------------------------------------------------------------------------


def build_setup(args: argparse.Namespace, root: Path) -> dict:
    """Tokenizer, herd checkpoint (end-of-turn output rows zeroed) and its HF export."""
    import herd
    from herd.checkpoint.convert import convert
    from herd.checkpoint.io import save_herd_folder
    from herd.vocab.bpe import train_bpe

    rng = random.Random(args.seed)
    words = vocabulary(rng)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(sentence(rng, words, 3, 40) for _ in range(6000)), "utf-8")
    tok = herd.load_tokenizer(train_bpe([corpus], args.vocab, root / "tok", show_progress=False))
    config, model = random_model(tok, args.dim, args.layers, args.heads, args.kv_heads,
                                 args.ffn_dim, args.context, args.seed)  # fmt: skip
    with torch.no_grad():  # logit 0 for end of turn: below the largest random logit, always
        model.output.weight[sorted(tok.stop_ids)] = 0.0
    base = save_herd_folder(config, model.state_dict(), root / "herd", tokenizer=tok.files())
    hf_dir = convert(base, root / "hf", dst_format="hf")
    log(
        f"setup: vocabulary {tok.vocab_size}, {config.num_params() / 1e6:.2f} M parameters, "
        f"stop ids {sorted(tok.stop_ids)} zeroed in the output layer"
    )
    return {"tok": tok, "words": words, "herd": base, "hf": hf_dir, "config": config}


def text_of(tok, rng: random.Random, words: list[str], n_tokens: int) -> str:
    """Generated sentences cut to about `n_tokens` tokens."""
    parts: list[str] = []
    while len(tok.encode(" ".join(parts))) < n_tokens:
        parts.append(sentence(rng, words, 5, 25))
    ids = tok.encode(" ".join(parts))[:n_tokens]
    return tok.decode(ids)


def request_mix(args, setup, n: int, seed: int) -> list[dict]:
    """`n` chat requests (messages, max_tokens) from the seeded mix of lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = text_of(setup["tok"], rng, setup["words"], rng.choice(args.prompt_tokens))
        out.append(
            {
                "messages": [{"role": "user", "content": text}],
                "max_tokens": rng.choice(args.max_tokens),
            }
        )
    return out


# --- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on loopback; its output goes to a log file, shown if it fails."""

    def __init__(self, name: str, cmd: list[str], model: str, port: int, root: Path, env: dict):
        self.name, self.model, self.port = name, model, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = root / f"{name}.log"
        self.cmd = cmd
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s:\n{self.tail()}")

    def command_line(self) -> str:
        """The command as one would type it: `herd serve ...` or `transformers serve ...`."""
        launcher = "herd" if self.cmd[1] == "-m" else "transformers"
        return shlex.join([launcher, *self.cmd[3:]])

    def tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def server_env(args) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def start_herd(args, setup, root: Path, name: str, extra: list[str]) -> Server:
    port = free_port()
    cmd = [
        sys.executable, "-m", "herd", "serve", str(setup["herd"]), "--port", str(port),
        "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
        "--max-batch", str(args.max_batch), "--max-queue", "256", "--served-model-name", "bench",
        *extra, *shlex.split(args.herd_args),
    ]  # fmt: skip
    return Server(name, cmd, "bench", port, root, server_env(args))


def start_peer(args, setup, root: Path) -> Server:
    port = free_port()
    cmd = [
        sys.executable, "-c", PEER_LAUNCH, "serve", str(setup["hf"]), "--host", "127.0.0.1",
        "--port", str(port), "--device", args.device, "--dtype", args.dtype,
        "--log-level", "warning",
    ]  # fmt: skip
    if not args.peer_sequential:
        # herd's KV capacity (--max-batch rows of the whole context) in pages of 256 positions;
        # left to itself transformers sizes the cache from free memory (~12 GB on a CPU box)
        blocks = -(-args.max_batch * args.context // 256)
        cmd += ["--continuous-batching", "--cb-num-blocks", str(blocks)]
    cmd += shlex.split(args.peer_args)
    return Server("transformers", cmd, str(setup["hf"]), port, root, server_env(args))


# --- load generation ----------------------------------------------------------------------------


async def one_request(client, server: Server, req: dict, timeout: float) -> dict:
    body = {
        "model": server.model,
        "messages": req["messages"],
        "max_tokens": req["max_tokens"],
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    rec: dict = {"max_tokens": req["max_tokens"], "ttft": None, "e2e": None, "tokens": 0}
    try:
        async with client.stream(
            "POST", server.url + "/v1/chat/completions", json=body, timeout=timeout
        ) as r:
            if r.status_code != 200:
                rec["error"] = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return rec
            usage = None
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    rec["error"] = f"stream error: {event['error']}"
                    return rec
                for choice in event.get("choices") or []:
                    if choice.get("delta", {}).get("content") and rec["ttft"] is None:
                        rec["ttft"] = time.perf_counter() - t0
                    if choice.get("finish_reason"):
                        rec["finish"] = choice["finish_reason"]
                usage = event.get("usage") or usage
        rec["e2e"] = time.perf_counter() - t0
        if usage is None:
            rec["error"] = "no usage in the stream"
        else:
            rec["tokens"] = usage["completion_tokens"]
        if rec["ttft"] is None and rec["tokens"]:
            rec["ttft"] = rec["e2e"]  # every token was text-less (special tokens)
    except Exception as e:  # a transport error or a malformed stream counts as an error
        rec["error"] = f"{type(e).__name__}: {e}"
    return rec


async def run_load(server: Server, requests: list[dict], clients: int, timeout: float) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for req in requests:
        queue.put_nowait(req)
    records: list[dict] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            while not queue.empty():
                records.append(await one_request(client, server, queue.get_nowait(), timeout))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "records": records}


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarise(runs: list[dict]) -> dict:
    """One level's figures, pooled over its rounds."""
    records = [r for run in runs for r in run["records"]]
    ok = [r for r in records if "error" not in r]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    e2e = [r["e2e"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    wall = sum(run["wall_s"] for run in runs)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_samples": sorted({r["error"] for r in records if "error" in r})[:3],
        "short": sum(r["tokens"] < r["max_tokens"] for r in ok),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "ttft_p50": percentile(ttft, 0.5),
        "ttft_p99": percentile(ttft, 0.99),
        "e2e_p50": percentile(e2e, 0.5),
        "e2e_p99": percentile(e2e, 0.99),
        "rounds_tokens_per_s": [
            sum(r["tokens"] for r in run["records"] if "error" not in r) / run["wall_s"]
            for run in runs
        ],
    }


def take_turns(servers: list[Server], jobs, run_one) -> dict[str, list]:
    """Run each job on every server, the order reversed from one job to the next."""
    out: dict[str, list] = {s.name: [] for s in servers}
    for i, job in enumerate(jobs):
        for s in servers if i % 2 == 0 else servers[::-1]:
            out[s.name].append(run_one(s, job))
    return out


# --- stages -------------------------------------------------------------------------------------


def load_stage(args, setup, root: Path) -> dict:
    herd_srv = start_herd(args, setup, root, "herd", [])
    peer = start_peer(args, setup, root)
    servers = [herd_srv, peer]
    try:
        for s in servers:
            s.wait_healthy(args.startup_timeout)
            log(f"{s.name} healthy on port {s.port}: {s.command_line()}")
        warm = request_mix(args, setup, args.warmup, args.seed + 999)
        for s in servers:
            res = summarise([asyncio.run(run_load(s, warm, 4, args.request_timeout))])
            log(f"{s.name} warm-up: {res['requests']} requests, {res['errors']} errors")
        per_level: dict[str, dict] = {s.name: {} for s in servers}
        for clients in args.levels:
            n = max(args.min_requests, clients * args.requests_per_client)
            reqs = request_mix(args, setup, n, args.seed + clients)

            def run_one(s: Server, _round: int, reqs=reqs, clients=clients) -> dict:
                run = asyncio.run(run_load(s, reqs, clients, args.request_timeout))
                tok = sum(r["tokens"] for r in run["records"] if "error" not in r)
                errs = sum("error" in r for r in run["records"])
                log(
                    f"{s.name:>12} @ {clients:>2} clients: {len(reqs)} requests, "
                    f"{tok / run['wall_s']:8.1f} tokens/s, {errs} errors"
                )
                return run

            runs = take_turns(servers, range(args.rounds), run_one)
            for s in servers:
                per_level[s.name][str(clients)] = summarise(runs[s.name])
        return {"levels": per_level, "commands": {s.name: s.command_line() for s in servers}}
    finally:
        for s in servers:
            s.stop()


def prefix_stage(args, setup, root: Path) -> dict:
    cached = start_herd(args, setup, root, "herd-prefix-cache", [])
    plain = start_herd(args, setup, root, "herd-no-prefix-cache", ["--no-prefix-cache"])
    servers = [cached, plain]
    try:
        for s in servers:
            s.wait_healthy(args.startup_timeout)
        rng = random.Random(args.seed + 7)
        system = text_of(setup["tok"], rng, setup["words"], args.prefix_tokens)

        def batch(n: int) -> list[dict]:
            return [
                {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": text_of(setup["tok"], rng, setup["words"], 16)},
                    ],
                    "max_tokens": args.prefix_max_tokens,
                }
                for _ in range(n)
            ]

        # an untimed round first on each: the cached server then holds the system prompt in a
        # slot, and neither pays a fresh process's first-request costs in the timed rounds
        for s in servers:
            asyncio.run(run_load(s, batch(args.prefix_requests), 1, args.request_timeout))
        rounds = [batch(args.prefix_requests) for _ in range(args.rounds)]

        def run_one(s: Server, reqs: list[dict]) -> dict:
            run = asyncio.run(run_load(s, reqs, args.prefix_clients, args.request_timeout))
            ttft = [r["ttft"] for r in run["records"] if r.get("ttft") is not None]
            log(f"{s.name:>22}: TTFT median {statistics.median(ttft) * 1e3:8.1f} ms")
            return run

        runs = take_turns(servers, rounds, run_one)
        out = {s.name: summarise(runs[s.name]) for s in servers}
        for s in servers:
            ttft = [r["ttft"] for run in runs[s.name] for r in run["records"] if r.get("ttft")]
            out[s.name]["ttft_mean"] = statistics.fmean(ttft) if ttft else None
        system_tokens = len(setup["tok"].encode(system))
        return {"servers": out, "system_prompt_tokens": system_tokens}
    finally:
        for s in servers:
            s.stop()


# --- report -------------------------------------------------------------------------------------


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def print_load(result: dict) -> None:
    levels = result["levels"]
    for name, table in levels.items():
        print(f"\n{name}")
        print(
            f"{'clients':>7} {'requests':>8} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
            f"{'e2e p50':>8} {'e2e p99':>8} {'errors':>6} {'short':>5}   (ms)"
        )
        for clients, r in table.items():
            print(
                f"{clients:>7} {r['requests']:>8} {r['tokens_per_s']:>9.1f} {ms(r['ttft_p50']):>9} "
                f"{ms(r['ttft_p99']):>9} {ms(r['e2e_p50']):>8} {ms(r['e2e_p99']):>8} "
                f"{r['errors']:>6} {r['short']:>5}"
            )
            for e in r["error_samples"]:
                print(f"        error: {e}")
    herd, peer = levels["herd"], levels["transformers"]
    checks = result["checks"] = {}
    if "1" in herd and "16" in herd:
        ratio = herd["16"]["tokens_per_s"] / max(herd["1"]["tokens_per_s"], 1e-9)
        checks["herd16_over_herd1"] = ratio
        print(
            f"\nherd@16 / herd@1 tokens/s:          {ratio:6.2f}x (target >= 4x: {met(ratio >= 4)})"
        )
    if "16" in herd and "16" in peer:
        ratio = herd["16"]["tokens_per_s"] / max(peer["16"]["tokens_per_s"], 1e-9)
        checks["herd16_over_peer16"] = ratio
        print(
            f"herd@16 / transformers@16 tokens/s: {ratio:6.2f}x (target >= 2x: {met(ratio >= 2)})"
        )
    errors = sum(r["errors"] for r in herd.values())
    checks["herd_errors"] = errors
    print(f"herd errors at every level:         {errors:6d}  (target 0: {met(errors == 0)})")


def print_prefix(result: dict) -> None:
    on, off = result["servers"]["herd-prefix-cache"], result["servers"]["herd-no-prefix-cache"]
    ratio = on["ttft_p50"] / off["ttft_p50"] if on["ttft_p50"] and off["ttft_p50"] else None
    result["ttft_ratio"] = ratio
    print(f"\nprefix cache, {result['system_prompt_tokens']}-token shared system prompt")
    for name, r in result["servers"].items():
        print(
            f"{name:>22}: TTFT p50 {ms(r['ttft_p50']):>6} ms, p99 {ms(r['ttft_p99']):>6} ms "
            f"({r['requests']} requests, {r['errors']} errors)"
        )
    if ratio is not None:
        print(
            f"TTFT with / without the prefix cache: {ratio:.3f} (target <= 1/3: {met(ratio <= 1 / 3)})"
        )


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transformers

    results: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "threads": args.threads,
        "stages": {},
        "errors": {},
    }
    if args.device == "cuda" and torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="herd-serve-bench-") as tmp:
        root = Path(tmp)
        setup = build_setup(args, root)
        results["parameters"] = setup["config"].num_params()
        for name, stage in (("load", load_stage), ("prefix", prefix_stage)):
            if name in args.stages:
                try:
                    results["stages"][name] = stage(args, setup, root)
                except Exception as e:  # the other stage still runs and the JSON keeps this one
                    results["errors"][name] = f"{type(e).__name__}: {e}"
                    log(f"{name} stage failed: {type(e).__name__}: {e}")
    if "load" in results["stages"]:
        print_load(results["stages"]["load"])
    if "prefix" in results["stages"]:
        print_prefix(results["stages"]["prefix"])
    p = setup["config"]
    print(
        f"\nmodel: dim {p.dim}, {p.n_layers} layers, {results['parameters'] / 1e6:.2f} M "
        f"parameters, {args.dtype} on {results.get('gpu', args.device)}; {args.threads} threads; "
        f"cpu: {results['cpu']}; torch {torch.__version__}, transformers {transformers.__version__}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
