"""What a safety guard adds to a served request: `herd serve MODEL` against `herd serve MODEL
--guard GUARD` on the same checkpoint, the same sequential chat requests through the official
`openai` client, over loopback.

Issue 35 (safety guard), evidence: the latency a guard adds per request (its input check before
the model runs and its output check of the finished reply), measured.

    .venv/bin/python bench/serve_guard.py                          # tiny models built here
    .venv/bin/python bench/serve_guard.py --model M --guard G --categories S1,S9 --requests 50
    .venv/bin/python bench/serve_guard.py --device cuda --out /tmp/guard.json

Setup (without --guard and --model, in a temporary folder): the tiny keyword guard of the tests
(tests/guard_model.py: `herd guard train` on generated rows, dim 64, 2 layers, its own BPE with
the Llama 3 chat format; a few minutes on a loaded 2-core CPU), served under its two categories
(S1, S9); and a randomly initialised Llama-shaped model over that tokenizer (default dim 256, 4
layers, context 1024) whose end-of-turn output rows are zeroed, so greedy decoding never ends a
reply early and every request generates exactly --max-tokens tokens on both servers.

Servers: two `python -m herd serve` subprocesses (bench/serve.py's Server), up for the whole run;
the second adds `--guard` (and `--guard-categories`). Requests: --warmup untimed requests to each,
then --requests non-streamed chat completions with temperature 0, one at a time, the servers
taking turns (the order reversed from one request to the next, so what else loads the machine
falls on both alike); the prompts are short everyday questions, so both checks run on every
request the guard lets through.

Threads: one per server by default. Requests are sequential, so the small model gains little
from a second thread, and on a shared 2-core machine a two-thread OpenMP team's spin-waiting
workers fight other processes for the cores: there `herd serve --threads 2` decoded this model
~30x slower than with one thread (3.1 s against 0.1 s a request; OMP_WAIT_POLICY=PASSIVE made it
0.1 s too), until torch work on a second thread (the guard's checks) made libgomp throttle its
spinning. The guarded server gained that and the plain one did not, so a two-thread comparison
there measured libgomp, not the guard.

Printed: each server's mean, p50 and p90 end-to-end latency, with how many requests the guard
refused before the model ran and how many replies it replaced (content_filter); what the guard
adds per request, over the requests the model ran on both servers (a refused one skips the model
and would flatter the guard); and the guard's own time per check from the guarded server's
/metrics (herd_guard_seconds by stage).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import log  # bench/common.py, beside this script
from post_train import cpu_model, random_model
from serve import REPO, Server, free_port, percentile, server_env

# everyday questions (in the wording the tiny guard was trained on, so it passes them)
PROMPTS = [
    "How do I make a cake?",
    "Where can I get bread?",
    "Tell me how to build a kite at home.",
    "Explain the garden to me.",
    "I want a song for tomorrow.",
    "Where can I get a letter?",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, help="checkpoint to serve (default: built here)")
    p.add_argument("--guard", type=Path, help="guard checkpoint (default: the tiny keyword guard)")
    p.add_argument(
        "--categories",
        help="--guard-categories for the guarded server (default S1,S9 for the tiny guard, else "
        "the guard's whole policy)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both serve")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of each server (default 1: see the module docstring)",
    )
    p.add_argument("--requests", type=int, default=30, help="timed requests per server")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests per server first")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens each reply generates")
    m = p.add_argument_group("the model built without --model (random weights)")
    m.add_argument("--dim", type=int, default=256)
    m.add_argument("--layers", type=int, default=4)
    m.add_argument("--context", type=int, default=1024)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


def build_setup(args, root: Path) -> tuple[Path, Path, str | None]:
    """(model, guard, categories): the given ones, or built in `root`."""
    import herd
    from herd.checkpoint.io import save_herd_folder

    guard, categories = args.guard, args.categories
    if guard is None:
        sys.path.insert(0, str(REPO))
        from tests.guard_model import CATEGORIES, train_tiny_guard

        log("training the tiny keyword guard (tests/guard_model.py)")
        guard, categories = train_tiny_guard(root / "guard"), categories or CATEGORIES
    if args.model is not None:
        return args.model, guard, categories
    tok = herd.load_tokenizer(guard)
    config, model = random_model(tok, args.dim, args.layers, 4, 2, 3 * args.dim, args.context, 0)
    with torch.no_grad():  # logit 0 for end of turn: below the largest random logit, always
        model.output.weight[sorted(tok.stop_ids)] = 0.0
    path = save_herd_folder(config, model.state_dict(), root / "model", tokenizer=tok.files())
    log(
        f"model: {config.num_params() / 1e6:.2f} M parameters, dim {args.dim}, {args.layers} layers"
    )
    return path, guard, categories


def start(args, model: Path, root: Path, name: str, extra: list[str]) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "herd", "serve", str(model), "--port", str(port), "--device",
           args.device, "--threads", str(args.threads), "--served-model-name", "bench", *extra]  # fmt: skip
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    return Server(name, cmd, "bench", port, root, server_env(args))


def guard_seconds(server: Server) -> dict[str, tuple[float, float]]:
    """{stage: (seconds summed, checks)} from the server's /metrics."""
    import httpx

    out: dict[str, list[float]] = {}
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        for stage in ("input", "output"):
            for i, kind in enumerate(("sum", "count")):
                if line.startswith(f'herd_guard_seconds_{kind}{{stage="{stage}"}}'):
                    out.setdefault(stage, [0.0, 0.0])[i] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def one(client, args, prompt: str) -> dict:
    t0 = time.perf_counter()
    r = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": prompt}],
        max_tokens=args.max_tokens, temperature=0,
    )  # fmt: skip
    return {
        "s": time.perf_counter() - t0,
        "finish": r.choices[0].finish_reason,
        "tokens": r.usage.completion_tokens,
    }


def summary(records: list[dict]) -> dict:
    seconds = [r["s"] for r in records]
    filtered = [r for r in records if r["finish"] == "content_filter"]
    return {
        "requests": len(records),
        "mean_ms": 1000 * statistics.fmean(seconds),
        "p50_ms": 1000 * percentile(seconds, 0.5),
        "p90_ms": 1000 * percentile(seconds, 0.9),
        # refused before the model ran (no tokens), or the reply replaced
        "refused_input": sum(r["tokens"] == 0 for r in filtered),
        "replaced_output": sum(r["tokens"] > 0 for r in filtered),
        "completion_tokens": sum(r["tokens"] for r in records),
    }


def measure(args, model: Path, guard: Path, categories: str | None, root: Path) -> dict:
    import openai

    extra = ["--guard", str(guard)] + (["--guard-categories", categories] if categories else [])
    servers = [start(args, model, root, "plain", []), start(args, model, root, "guarded", extra)]
    try:
        for s in servers:
            s.wait_healthy(600)
        clients = {
            s.name: openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
            for s in servers
        }
        for s in servers:
            for i in range(args.warmup):
                one(clients[s.name], args, PROMPTS[i % len(PROMPTS)])
        before = guard_seconds(servers[1])
        records: dict[str, list] = {s.name: [] for s in servers}
        for i in range(args.requests):
            for s in servers if i % 2 == 0 else servers[::-1]:
                records[s.name].append(one(clients[s.name], args, PROMPTS[i % len(PROMPTS)]))
        after = guard_seconds(servers[1])
    finally:
        for s in servers:
            s.stop()
    checks = {}
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            checks[stage] = {
                "checks": int(count - c0),
                "mean_ms": 1000 * (total - t0) / (count - c0),
            }
    result = {name: summary(rs) for name, rs in records.items()}
    # the added latency over the requests the model ran on both servers (a refused input skips
    # the model, which would make the guard look faster)
    ran = [i for i, r in enumerate(records["guarded"]) if r["tokens"] > 0]
    plain = [records["plain"][i]["s"] for i in ran]
    guarded = [records["guarded"][i]["s"] for i in ran]
    result["compared"] = len(ran)
    if ran:
        result["added_mean_ms"] = 1000 * (statistics.fmean(guarded) - statistics.fmean(plain))
        result["added_p50_ms"] = 1000 * (percentile(guarded, 0.5) - percentile(plain, 0.5))
    result["guard_checks"] = checks
    return result


def report(r: dict, args) -> None:
    print(f"\n{args.requests} sequential chat requests per server, {args.max_tokens} tokens each")
    print(f"{'server':<10}{'mean ms':>10}{'p50 ms':>10}{'p90 ms':>10}"
          f"{'refused input':>15}{'replaced output':>17}")  # fmt: skip
    for name in ("plain", "guarded"):
        s = r[name]
        print(f"{name:<10}{s['mean_ms']:>10.1f}{s['p50_ms']:>10.1f}{s['p90_ms']:>10.1f}"
              f"{s['refused_input']:>15}{s['replaced_output']:>17}")  # fmt: skip
    if r["compared"]:
        print(
            f"added by the guard, over the {r['compared']} requests the model ran on both: "
            f"{r['added_mean_ms']:.1f} ms mean, {r['added_p50_ms']:.1f} ms p50"
        )
    for stage, c in r["guard_checks"].items():
        print(f"guard {stage} check: {c['mean_ms']:.1f} ms mean over {c['checks']} checks")
    total = sum(c["mean_ms"] for c in r["guard_checks"].values())
    print(f"guard checks per request (input + output): {total:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="herd-serve-guard-") as tmp:
        root = Path(tmp)
        model, guard, categories = build_setup(args, root)
        result = measure(args, model, guard, categories, root)
    report(result, args)
    print(
        f"\nmodel {model}, guard {guard}; {args.device}, {args.threads} threads; cpu: "
        f"{cpu_model()}; torch {torch.__version__}"
    )
    if args.out is not None:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"config": config, **result}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
