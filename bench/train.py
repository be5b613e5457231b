"""CPU training-step benchmark: herd against transformers' LlamaForCausalLM, same weights and data.

One training step is: forward, float32 cross-entropy over the full vocabulary, backward, AdamW step,
zero_grad. The model is small and Llama-shaped (6 layers, dim 256, 8 heads, SwiGLU width 704,
vocabulary 32000 by default), batch 8 x 256 tokens, float32. Both engines run in this one process:
the transformers model is loaded from a Hugging Face folder that herd writes from its own state
dict, so the weights are identical, and every step of both engines sees the same random batch.

    .venv/bin/python bench/train.py                      # threads: what torch sees
    .venv/bin/python bench/train.py --threads 1 2 --out /tmp/train.json
    .venv/bin/python bench/train.py --profile            # also where each engine's time goes

Optimizers: herd uses its own `build_optimizer` (torch's fused AdamW, lr 3e-4, betas 0.9/0.95,
weight decay 0.1 on matrices only); transformers gets the same fused torch AdamW with the same
hyper-parameters and decay rule (decay on parameters with >= 2 dimensions), which is also what
transformers' Trainer uses by default with torch >= 2.8 (`adamw_torch_fused`). Neither clips
gradients or changes the learning rate, so the step measured is exactly the same work.

Timing: after `--warmup` untimed steps per engine, the engines take turns (the order flips every
round, so CPU contention from other processes and thermal drift hit both alike). By default the
turns are single steps (`--block 1`); `--block 3` gives each engine 3 consecutive steps of which
the last 2 are timed, as a training job runs one engine's steps back to back (a step that
directly follows the other engine's starts on caches and allocator state that engine left).
tokens/s = batch * seq / seconds of one step; best and median are reported, and the process
CPU seconds per step (at 1 thread the figure least disturbed by other processes). The headline
ratio herd/transformers uses the median. Each engine's system time and minor page faults per step
are printed too, with the CPU model: transformers' step maps fresh [tokens, vocabulary] tensors
(~260,000 faults per step) and what a fault costs differs between machines, which moves the
ratio (README: 1.24-1.38x on an AVX2 EPYC, 1.44-1.92x on an AVX-512 Zen 4 VM).

Compilation: `--compile herd` compiles herd's model as `train.compile = true` does, `--compile
both` compiles transformers' too (the like-for-like comparison of compiled steps); the warm-up
steps absorb the compilation. The default compares both engines eager, as each runs on CPU by
default.

Threads: `--threads 1 2` runs the benchmark once per count. On a small shared machine, OpenMP's
spinning workers make multi-threaded steps erratic when another process holds a core (seen here: 2
threads took ~11 s per step against ~2.8 s with 1 thread); OMP_WAIT_POLICY=PASSIVE (set before
Python starts; it is recorded in the JSON) brought 2 threads back to ~3 s per step. On an idle
machine leave it unset: sleeping workers made herd's block products a quarter slower at 2 threads.

Correctness: the two engines' losses on the first batch (same weights, nothing updated yet) must
agree within `--loss-tol`; later losses drift apart only by float32 rounding, and the largest
difference over all timed steps is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import herd
from herd.model.config import ModelConfig
from herd.train.config import OptimConfig
from herd.train.optim import build_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Tokens/s of one float32 training step (forward, cross-entropy, backward, AdamW, "
            "zero_grad) on CPU: herd vs transformers' LlamaForCausalLM on the same weights and "
            "batches, interleaved in one process."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    p.add_argument("--dim", type=int, default=256, help="model width")
    p.add_argument("--layers", type=int, default=6, help="number of Transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="query heads")
    p.add_argument("--kv-heads", type=int, default=8, help="key/value heads (GQA when < --heads)")
    p.add_argument(
        "--ffn-dim",
        type=int,
        default=704,
        help="SwiGLU hidden width (704 = 2/3 * 4 * 256 rounded up to a multiple of 64)",
    )
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence (also max_seq_len)")
    p.add_argument(
        "--steps", type=int, default=10, help="timed steps per engine (and thread count)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per engine before timing")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="torch intra-op thread counts; the whole benchmark runs once per count, each on "
        "freshly built models and optimizers",
    )
    p.add_argument(
        "--block",
        type=int,
        default=1,
        help="steps per engine per round: K > 1 runs K consecutive steps per engine and times "
        "the last K - 1, as each engine runs in a training job of its own; 1 interleaves "
        "single steps (herd, transformers, transformers, herd, ...), where each step starts "
        "on caches and allocator state the other engine left",
    )
    p.add_argument(
        "--compile",
        default="none",
        choices=["none", "herd", "both"],
        help="torch.compile the models: none (eager, the default of both engines on CPU), herd "
        "(herd's model as `train.compile = true` does) or both (transformers' model too, the "
        "like-for-like comparison of compiled steps); compilation happens in the warm-up steps",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    p.add_argument(
        "--loss-tol",
        type=float,
        default=1e-4,
        help="largest allowed |herd - transformers| of the first-batch loss",
    )
    p.add_argument(
        "--hf-attn",
        default="sdpa",
        choices=["sdpa", "eager"],
        help="transformers attn_implementation",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, run --profile-steps more steps of each engine under torch.profiler "
        "and print the operators that take the most time",
    )
    p.add_argument("--profile-steps", type=int, default=3, help="steps per engine under --profile")
    p.add_argument(
        "--profile-rows", type=int, default=25, help="operator rows printed per engine (--profile)"
    )
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 2 or args.block < 1:
        p.error("--steps, --batch and --block must be >= 1, --warmup >= 0, --seq >= 2")
    if min(args.threads) < 1:
        p.error("--threads must be >= 1")
    if args.profile and args.profile_steps < 1:
        p.error("--profile-steps must be >= 1")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- engines ----------------------------------------------------------------------------------


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        vocab_size=args.vocab,
        ffn_dim=args.ffn_dim,
        max_seq_len=args.seq,
    )


def hf_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """The AdamW herd's `build_optimizer` makes, for any model: decay on >= 2-D params, fused."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True
    )


PHASES = ("forward+loss", "backward", "optimizer", "zero_grad")


class Engine:
    """A model, its optimizer and a function (inputs, targets) -> mean float32 cross-entropy."""

    def __init__(self, name: str, model: torch.nn.Module, optimizer, loss: Callable):
        self.name = name
        self.model = model.train()
        self.optimizer = optimizer
        self.loss = loss
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self.sys_seconds: list[float] = []
        self.page_faults: list[int] = []
        self.losses: list[float] = []

    def step(self, inputs: torch.Tensor, targets: torch.Tensor, phases: dict | None = None):
        """One full training step; returns the loss tensor. `phases` collects seconds per phase."""
        marks = [time.perf_counter()]
        loss = self.loss(inputs, targets)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        self.optimizer.step()
        marks.append(time.perf_counter())
        self.optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if phases is not None:
            for name, a, b in zip(PHASES, marks, marks[1:], strict=False):
                phases.setdefault(name, []).append(b - a)
        return loss.detach()

    def timed_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        # System time and minor page faults show what fresh memory costs: a kernel's first touch
        # of newly mapped pages, whose price differs a lot between machines (and VMs).
        usage, cpu, start = _usage(), time.process_time(), time.perf_counter()
        loss = self.step(inputs, targets)
        self.seconds.append(time.perf_counter() - start)
        self.cpu_seconds.append(time.process_time() - cpu)
        after = _usage()
        self.sys_seconds.append(after.ru_stime - usage.ru_stime)
        self.page_faults.append(after.ru_minflt - usage.ru_minflt)
        self.losses.append(float(loss))


def _usage():
    return resource.getrusage(resource.RUSAGE_SELF)


def build_engines(
    config: ModelConfig, seed: int, hf_attn: str, folder: Path, compile_mode: str = "none"
) -> list[Engine]:
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from herd.checkpoint.hf import write_hf_folder

    hf_logging.disable_progress_bar()
    model = herd.build_model(config, device="cpu", dtype=torch.float32, seed=seed)
    write_hf_folder(config, model.state_dict(), folder / "hf", overwrite=True)
    hf = LlamaForCausalLM.from_pretrained(
        folder / "hf", dtype=torch.float32, attn_implementation=hf_attn
    )
    # herd as its trainer runs: the loss fused with the output projection (no [B, T, V] logits).
    herd_forward = torch.compile(model) if compile_mode != "none" else model
    hf_forward = torch.compile(hf) if compile_mode == "both" else hf
    herd_engine = Engine(
        "herd",
        model,
        build_optimizer(model, OptimConfig()),
        lambda inputs, targets: herd_forward(inputs, targets=targets) / targets.numel(),
    )

    def hf_loss(inputs, targets):
        logits = hf_forward(input_ids=inputs, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    hf_engine = Engine("transformers", hf, hf_optimizer(hf, OptimConfig()), hf_loss)
    return [herd_engine, hf_engine]


# --- benchmark --------------------------------------------------------------------------------


def make_batches(args: argparse.Namespace, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` random (inputs, targets) pairs [batch, seq], targets being inputs shifted by one."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    out = []
    for _ in range(n):
        window = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)
        out.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    return out


def summarise(engine: Engine, tokens_per_step: int) -> dict:
    rates = [tokens_per_step / s for s in engine.seconds]
    return {
        "tok_s_median": statistics.median(rates),
        "tok_s_best": max(rates),
        "step_ms_median": 1e3 * statistics.median(engine.seconds),
        "step_ms_best": 1e3 * min(engine.seconds),
        "step_ms": [1e3 * s for s in engine.seconds],
        "cpu_ms_median": 1e3 * statistics.median(engine.cpu_seconds),
        "cpu_ms": [1e3 * s for s in engine.cpu_seconds],
        "sys_ms_median": 1e3 * statistics.median(engine.sys_seconds),
        "page_faults_median": statistics.median(engine.page_faults),
        "sys_ms": [1e3 * s for s in engine.sys_seconds],
        "page_faults": engine.page_faults,
    }


def run_once(args: argparse.Namespace, threads: int, folder: Path) -> dict:
    """The whole benchmark at one thread count, on fresh models and optimizers."""
    torch.set_num_threads(threads)
    config = model_config(args)
    engines = build_engines(config, args.seed, args.hf_attn, folder, args.compile)
    batches = make_batches(args, args.warmup + 2 * args.steps + 2)
    tokens_per_step = args.batch * args.seq

    # Same weights, nothing updated yet: the first-batch losses must agree.
    with torch.no_grad():
        inputs, targets = batches[0]
        first = [float(e.loss(inputs, targets)) for e in engines]
    loss_diff = abs(first[0] - first[1])
    log(
        f"[threads {threads}] first-batch loss: herd {first[0]:.6f}, transformers {first[1]:.6f} "
        f"(|diff| {loss_diff:.2e}, tolerance {args.loss_tol:g})"
    )

    # Rounds: each engine runs `block` consecutive steps (the first untimed when block > 1, so
    # the engine starts its timed steps with its own working set in cache and the allocator),
    # the order flipping every round; both engines see the same batches in the same order.
    per_round = 1 if args.block == 1 else args.block - 1
    for i in range(args.warmup):
        for e in engines:
            e.step(*batches[i])
    cursor, rnd = args.warmup, 0
    while len(engines[0].seconds) < args.steps:
        order = engines if rnd % 2 == 0 else engines[::-1]
        for e in order:
            b = cursor
            if args.block > 1:
                e.step(*batches[b])
                b += 1
            for _ in range(min(per_round, args.steps - len(e.seconds))):
                e.timed_step(*batches[b])
                b += 1
        cursor, rnd = b, rnd + 1
        log(
            f"[threads {threads}] round {rnd}: "
            + ", ".join(f"{e.name} {1e3 * e.seconds[-1]:.0f} ms" for e in engines)
        )

    herd_r, hf_r = (summarise(e, tokens_per_step) for e in engines)
    # The i-th timed steps of the two engines ran in the same round, next to each other: their
    # ratios show how far one run's noise moves the ratio (10th to 90th percentile).
    paired = sorted(b / a for a, b in zip(engines[0].seconds, engines[1].seconds, strict=True))
    spread = statistics.quantiles(paired, n=10) if len(paired) > 1 else paired * 9
    drift = max(abs(a - b) for a, b in zip(engines[0].losses, engines[1].losses, strict=True))
    result = {
        "threads": threads,
        "herd": herd_r,
        "transformers": hf_r,
        "ratio_median": herd_r["tok_s_median"] / hf_r["tok_s_median"],
        "ratio_best": herd_r["tok_s_best"] / hf_r["tok_s_best"],
        "ratio_cpu": hf_r["cpu_ms_median"] / herd_r["cpu_ms_median"],
        "ratio_paired": {"median": statistics.median(paired), "p10": spread[0], "p90": spread[-1]},
        "first_loss": {"herd": first[0], "transformers": first[1], "abs_diff": loss_diff},
        "losses_agree": loss_diff <= args.loss_tol,
        "max_timed_loss_diff": drift,
        "timed_losses": {e.name: e.losses for e in engines},
    }
    if args.profile:
        result["profile"] = {e.name: profile(e, batches, args) for e in engines}
    return result


# --- profiling --------------------------------------------------------------------------------


# Operator name -> category, for the profile summary (self CPU time; "other" is everything else:
# norms, RoPE, SiLU, residual adds, casts, the embedding, autograd bookkeeping).
CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("attention (SDPA)", ("scaled_dot_product",)),
    ("log-softmax / NLL", ("aten::_log_softmax", "aten::nll_loss")),
    ("fill / zero", ("aten::fill_", "aten::zero_")),
    (
        "AdamW arithmetic",
        (
            "aten::_fused_adam",
            "aten::_foreach",
            "aten::lerp_",
            "aten::addcdiv_",
            "aten::addcmul_",
            "aten::sqrt",
        ),
    ),
    ("AdamW Python", ("Optimizer.step", "Optimizer.zero_grad")),
)


def category(op: str) -> str:
    return next((name for name, keys in CATEGORIES if any(k in op for k in keys)), "other")


def profile(engine: Engine, batches, args: argparse.Namespace) -> dict:
    """Where one engine's step time goes: wall seconds per phase, then self CPU time per operator
    (with input shapes) and per category under torch.profiler. Prints tables, returns both."""
    from torch.profiler import ProfilerActivity, profile, record_function

    n = args.profile_steps
    phases: dict[str, list[float]] = {}
    for i in range(n):
        engine.step(*batches[i % len(batches)], phases=phases)
    phase_ms = {k: 1e3 * statistics.median(v) for k, v in phases.items()}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(n):
            with record_function(f"{engine.name}_step"):
                engine.step(*batches[i % len(batches)])
    averages = [a for a in prof.key_averages(group_by_input_shape=True) if "_step" not in a.key]
    total = sum(a.self_cpu_time_total for a in averages)
    by_category: dict[str, float] = {}
    for a in averages:
        c = category(a.key)
        by_category[c] = by_category.get(c, 0.0) + a.self_cpu_time_total / 1e3 / n

    print(f"\n--- {engine.name}: wall ms per phase (median of {n} steps) ---")
    print("  ".join(f"{k} {v:.0f}" for k, v in phase_ms.items()))
    print(f"--- {engine.name}: self CPU ms per step by category ---")
    for c, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
        print(f"{c:<24}{ms:>10.1f}{100 * ms * n * 1e3 / total:>7.1f}%")
    print(f"--- {engine.name}: top operators by self CPU time ---")
    print(f"{'operator':<40}{'input shapes':<44}{'calls':>6}{'ms/step':>9}{'share':>7}")
    top = []
    rows = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)
    for a in rows[: args.profile_rows]:
        ms = a.self_cpu_time_total / 1e3 / n
        share = a.self_cpu_time_total / total
        calls = a.count / n
        shapes = str(a.input_shapes).replace(" ", "")
        print(f"{a.key[:39]:<40}{shapes[:43]:<44}{calls:>6.0f}{ms:>9.1f}{100 * share:>6.1f}%")
        top.append(
            {
                "op": a.key,
                "shapes": shapes,
                "calls_per_step": calls,
                "ms_per_step": ms,
                "share": share,
            }
        )
    print(f"{'total':<84}{'':>6}{total / 1e3 / n:>9.1f}")
    return {"phase_ms": phase_ms, "category_ms": by_category, "top_ops": top}


# --- main -------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (Linux), which the ratio depends on: see the README's runs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    import transformers

    results: dict = {
        "config": {
            "vocab": args.vocab,
            "dim": args.dim,
            "layers": args.layers,
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "ffn_dim": args.ffn_dim,
            "batch": args.batch,
            "seq": args.seq,
            "dtype": "float32",
            "steps": args.steps,
            "warmup": args.warmup,
            "hf_attn": args.hf_attn,
            "block": args.block,
            "compile": args.compile,
        },
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="herd-train-bench-") as tmp:
        for threads in args.threads:
            results["runs"].append(run_once(args, threads, Path(tmp)))

    print()
    print(
        f"training step, float32, batch {args.batch} x {args.seq} tokens, {args.layers} layers, "
        f"dim {args.dim}, vocab {args.vocab}; {args.steps} timed steps per engine"
    )
    print(
        f"{'threads':>7}{'herd tok/s':>18}{'transformers tok/s':>20}{'ratio':>14}"
        f"{'cpu ratio':>11}{'paired p10-p90':>16}{'loss diff':>11}"
    )
    print(f"{'':>7}{'median (best)':>18}{'median (best)':>20}{'median (best)':>14}")
    for r in results["runs"]:
        h, t = r["herd"], r["transformers"]
        print(
            f"{r['threads']:>7}{h['tok_s_median']:>10.0f} ({h['tok_s_best']:>5.0f})"
            f"{t['tok_s_median']:>12.0f} ({t['tok_s_best']:>5.0f})"
            f"{r['ratio_median']:>6.2f}x ({r['ratio_best']:.2f}x)"
            f"{r['ratio_cpu']:>10.2f}x"
            f"{r['ratio_paired']['p10']:>9.2f}-{r['ratio_paired']['p90']:.2f}x"
            f"{r['first_loss']['abs_diff']:>11.1e}"
        )
    print(
        "ratio = herd tok/s / transformers tok/s (target >= 1.3x); cpu ratio = transformers / herd "
        "process CPU seconds per step (least sensitive to other processes at 1 thread); paired = "
        "the ratios of the two engines' steps timed side by side in each round, 10th-90th "
        "percentile (the run's own noise); loss diff = first-batch |herd - transformers|"
    )
    print()
    print(f"{'threads':>7}{'':>3}system ms / page faults per step (median): herd, transformers")
    for r in results["runs"]:
        h, t = r["herd"], r["transformers"]
        print(
            f"{r['threads']:>7}{'':>3}{h['sys_ms_median']:.0f} ms / {h['page_faults_median']:,.0f}, "
            f"{t['sys_ms_median']:.0f} ms / {t['page_faults_median']:,.0f}"
        )
    print(f"cpu: {results['cpu']} ({results['cpu_capability']})")
    ok = all(r["losses_agree"] for r in results["runs"])
    if not ok:
        print(f"error: first-batch losses differ by more than --loss-tol {args.loss_tol:g}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
