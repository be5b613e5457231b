"""GPU decode benchmark: batch-1 bf16 greedy decode against the memory-bandwidth roofline.

Builds `llama3.2-1b` (random weights, context 4096) on the GPU, measures herd's compiled decode
(`herd.generate(..., compile=True)`, CUDA graphs) in tokens/s, the device's copy bandwidth
(a large device-to-device copy: bytes read + written / time), and the roofline

    roofline tok/s = copy bandwidth / weight bytes read per token    (tied embedding counted once)

then reports the fraction of it achieved (the target is >= 70%). transformers' `generate` runs on
the same weights for comparison: eager (dynamic cache) and, if time allows, with
cache_implementation="static", which transformers compiles itself on CUDA.

Two rates per engine: end to end (new tokens / wall time of one call, prefill and set-up included)
and steady decode (tokens after the first / time between them; herd only, from per-step
timestamps of `herd.stream_generate`). The roofline fraction uses the steady rate where there is
one. Results go to --out (bench/gpu.sh passes $OUT/gpu.json), rewritten after every stage so a
timeout keeps what finished. Run by bench/gpu.sh on a lent H100/H200; `--device cpu --preset demo
--tokens 16` is a quick dry run of every code path on a CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Results, common_prefix, log, quiet, sync

import herd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Batch-1 greedy decode on a GPU: herd compiled vs the copy-bandwidth roofline, with "
            "transformers' generate (eager and static-cache compiled) on the same weights."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="llama3.2-1b", help="herd preset (random weights)")
    p.add_argument("--max-seq-len", type=int, default=4096, help="model context length")
    p.add_argument("--device", default="cuda", help="torch device (cpu for a dry run)")
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float16", "float32"],
        help="weight and activation dtype",
    )
    p.add_argument("--tokens", type=int, default=256, help="new tokens per timed run")
    p.add_argument("--prompt-len", type=int, default=8, help="prompt tokens (random ids, BOS-free)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompt")
    p.add_argument(
        "--weight-scale",
        type=float,
        default=4.0,
        help="multiply the blocks' matrices (not embeddings or norms) by this, so greedy output is "
        "varied rather than a repeated token (herd's init, scale 1, echoes the prompt with tied "
        "embeddings); speed does not depend on the values",
    )
    p.add_argument(
        "--copy-mib",
        type=int,
        default=None,
        help="size of each copy buffer in MiB (None: 2048 on a GPU, 64 on a CPU)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="herd.generate(compile=...); on a CPU the compiled path costs ~1 minute",
    )
    p.add_argument(
        "--hf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time transformers' generate (eager, dynamic cache)",
    )
    p.add_argument(
        "--hf-static",
        action=argparse.BooleanOptionalAction,
        default=True,
        help='also time transformers with cache_implementation="static" (compiled on CUDA)',
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=270.0,
        help="skip the static-cache transformers run if this many seconds have passed before it",
    )
    default_json = Path(os.environ["OUT"]) / "gpu.json" if os.environ.get("OUT") else None
    p.add_argument(
        "--out",
        type=Path,
        default=default_json,
        help="write results here ($OUT/gpu.json when OUT is set)",
    )
    args = p.parse_args(argv)
    if args.tokens < 2 or args.prompt_len < 1 or args.repeats < 1:
        p.error("--tokens must be >= 2, --prompt-len and --repeats >= 1")
    return args


# --- bandwidth and roofline -------------------------------------------------------------------


def copy_bandwidth(device: torch.device, nbytes: int, iters: int = 20) -> float:
    """Bytes read + written per second by a large device-to-device copy (best of 3 batches)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            dst.copy_(src)
        sync(device)
        best = min(best, (time.perf_counter() - start) / iters)
    del src, dst
    return 2 * nbytes / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters, each distinct tensor once (a tied embedding/classifier counts once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(config, cache_len: int, dtype: torch.dtype) -> int:
    """K and V bytes one decode step reads at batch 1 when attention spans `cache_len` slots."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * cache_len * elem


# --- engines ----------------------------------------------------------------------------------


def dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return -1


def herd_run(model, prompt: list[int], tokens: int, compile: bool, device) -> dict:
    """One herd generation; wall time of the call and per-step timestamps."""
    stamps = []
    ids = []
    sync(device)
    start = time.perf_counter()
    for step in herd.stream_generate(
        model, prompt, max_new_tokens=tokens, temperature=0.0, compile=compile
    ):
        stamps.append(time.perf_counter())
        ids.append(step[0])
    end = time.perf_counter()
    return {"seconds": end - start, "decode_s": stamps[-1] - stamps[0], "ids": ids}


def bench_herd(model, prompt, tokens, repeats, compile, device) -> tuple[dict, list[int]]:
    # The warm-up is full length: the compiled step is specialised to the KV-cache length.
    graphs0 = dynamo_graphs()
    warm = herd_run(model, prompt, tokens, compile, device)
    graphs1 = dynamo_graphs()
    runs = [herd_run(model, prompt, tokens, compile, device) for _ in range(repeats)]
    graphs2 = dynamo_graphs()
    e2e = [tokens / r["seconds"] for r in runs]
    steady = [(tokens - 1) / r["decode_s"] for r in runs]
    result = {
        "compile": compile,
        "warmup_s": warm["seconds"],
        "tok_s_e2e_best": max(e2e),
        "tok_s_e2e_median": statistics.median(e2e),
        "tok_s_decode_best": max(steady),
        "tok_s_decode_median": statistics.median(steady),
        "run_seconds": [r["seconds"] for r in runs],
        "dynamo_graphs_compiled_in_warmup": graphs1 - graphs0,
        "dynamo_graphs_compiled_while_timed": graphs2 - graphs1,
    }
    return result, runs[-1]["ids"]


def hf_model(model, device, dtype, folder: Path):
    """transformers' LlamaForCausalLM with `model`'s weights, via herd's HF folder writer."""
    from transformers import LlamaForCausalLM

    from herd.checkpoint.hf import write_hf_folder

    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    write_hf_folder(model.config, state, folder / "hf", overwrite=True)
    del state
    hf = LlamaForCausalLM.from_pretrained(folder / "hf", dtype=dtype).to(device).eval()
    hf.generation_config.eos_token_id = None  # exactly `tokens` new tokens per run
    hf.generation_config.pad_token_id = 0
    return hf


def bench_hf(hf, prompt, tokens, repeats, device, static: bool) -> tuple[dict, list[int]]:
    ids = torch.tensor([prompt], device=device)
    mask = torch.ones_like(ids)
    extra = {"cache_implementation": "static"} if static else {}

    def run(n: int) -> tuple[float, list[int]]:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                **extra,
            )
        sync(device)
        new = out[0, len(prompt) :].tolist()
        if len(new) != n:
            raise RuntimeError(f"transformers produced {len(new)} tokens, expected {n}")
        return time.perf_counter() - start, new

    # Static: full-length warm-up, since the cache (and the compiled graph) has that length.
    warm_s, _ = run(tokens if static else min(tokens, 16))
    runs = [run(tokens) for _ in range(repeats)]
    e2e = [tokens / s for s, _ in runs]
    result = {
        "cache": "static" if static else "dynamic",
        "warmup_s": warm_s,
        "tok_s_e2e_best": max(e2e),
        "tok_s_e2e_median": statistics.median(e2e),
        "run_seconds": [s for s, _ in runs],
    }
    return result, runs[-1][1]


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    results = Results(
        args.out,
        device,
        preset=args.preset,
        max_seq_len=args.max_seq_len,
        dtype=args.dtype,
        tokens=args.tokens,
        prompt_len=args.prompt_len,
        repeats=args.repeats,
        weight_scale=args.weight_scale,
    )
    save, stage = results.save, results.stage

    # Bandwidth first, before the model takes memory.
    copy_mib = args.copy_mib or (2048 if device.type == "cuda" else 64)
    bandwidth = copy_bandwidth(device, copy_mib << 20)
    results["copy_bandwidth_GBps"] = bandwidth / 1e9
    results["copy_buffer_MiB"] = copy_mib
    log(f"device-to-device copy: {bandwidth / 1e9:.0f} GB/s (read + write, {copy_mib} MiB)")

    config = herd.preset(args.preset).replace(max_seq_len=args.max_seq_len)
    model = herd.build_model(config, device=device, dtype=dtype, seed=args.seed).eval()
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name.startswith("layers.") and not name.endswith("norm.weight"):
                w.mul_(args.weight_scale)
    wbytes = weight_bytes(model)
    roofline = bandwidth / wbytes
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(2, config.vocab_size, (args.prompt_len,), generator=gen).tolist()
    from herd.generation import cache_length

    cache_len = cache_length(args.prompt_len + args.tokens, config.max_seq_len)
    kv = kv_bytes_per_token(config, cache_len, dtype)
    results.update(
        params=sum(p.numel() for p in model.parameters()),
        weight_bytes=wbytes,
        roofline_tok_s=roofline,
        kv_cache_len=cache_len,
        kv_bytes_per_token=kv,
        roofline_with_kv_tok_s=bandwidth / (wbytes + kv),
    )
    log(
        f"{args.preset}: {results['params'] / 1e9:.3f}B parameters, {wbytes / 1e9:.3f} GB of "
        f"weights -> roofline {roofline:.0f} tok/s (KV cache {cache_len} slots adds "
        f"{kv / 1e6:.1f} MB/token: {results['roofline_with_kv_tok_s']:.0f} tok/s)"
    )
    save()
    outputs: dict[str, list[int]] = {}
    engines = results["engines"]

    def run_herd() -> None:
        label = "herd_compiled" if args.compile else "herd_eager"
        log(f"{label}: warm-up (compiles on first call) ...")
        engines[label], outputs[label] = bench_herd(
            model, prompt, args.tokens, args.repeats, args.compile, device
        )
        r = engines[label]
        r["roofline_fraction"] = r["tok_s_decode_best"] / roofline
        r["meets_70pct_target"] = r["roofline_fraction"] >= 0.7
        log(
            f"{label}: {r['tok_s_decode_best']:.1f} tok/s steady decode, "
            f"{r['tok_s_e2e_best']:.1f} tok/s end to end, {100 * r['roofline_fraction']:.1f}% "
            f"of roofline (first call {r['warmup_s']:.1f} s)"
        )

    stage("herd", run_herd)

    hf = None
    if args.hf or args.hf_static:

        def load_hf() -> None:
            nonlocal hf
            import transformers

            transformers.utils.logging.disable_progress_bar()
            results["transformers"] = transformers.__version__
            log(
                f"transformers {transformers.__version__}: writing and loading the same weights ..."
            )
            with tempfile.TemporaryDirectory(prefix="herd-gpu-bench-") as tmp:
                hf = hf_model(model, device, dtype, Path(tmp))
            with torch.inference_mode():
                tokens = torch.tensor([prompt], device=device)
                diff = (model(tokens).float() - hf(tokens).logits.float()).abs().max()
            results["hf_max_abs_logit_diff"] = float(diff)
            log(f"prompt logits max |herd - transformers| = {float(diff):.3g}")

        stage("hf_load", load_hf)

    def run_hf(static: bool) -> None:
        label = "transformers_static" if static else "transformers_eager"
        log(f"{label}: warm-up ...")
        engines[label], outputs[label] = bench_hf(
            hf, prompt, args.tokens, args.repeats, device, static
        )
        r = engines[label]
        r["roofline_fraction"] = r["tok_s_e2e_best"] / roofline
        log(
            f"{label}: {r['tok_s_e2e_best']:.1f} tok/s end to end "
            f"(first call {r['warmup_s']:.1f} s)"
        )

    if hf is not None and args.hf:
        stage("transformers_eager", lambda: run_hf(False))
    want_static = hf is not None and args.hf_static
    if want_static and results.within_budget("transformers_static", args.budget_s):
        stage("transformers_static", lambda: run_hf(True))

    # --- summary ---------------------------------------------------------------------------------
    ratios = {}
    herd_key = next((k for k in engines if k.startswith("herd")), None)
    if herd_key:
        for k in engines:
            if k.startswith("transformers"):
                ratios[f"{herd_key}/{k}"] = (
                    engines[herd_key]["tok_s_e2e_best"] / engines[k]["tok_s_e2e_best"]
                )
        for k, ids in outputs.items():
            if k != herd_key and herd_key in outputs:
                results.setdefault("greedy_agreement_prefix", {})[k] = common_prefix(
                    outputs[herd_key], ids
                )
    results["ratios_e2e"] = ratios
    save()

    print()
    print(f"device: {results.get('gpu', device.type)}, {args.preset} {args.dtype}, batch 1")
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s, weights {wbytes / 1e9:.3f} GB")
    print(f"roofline {roofline:.0f} tok/s (target >= 70%: {0.7 * roofline:.0f} tok/s)")
    print(f"{'engine':<22}{'decode tok/s':>14}{'e2e tok/s':>12}{'roofline':>10}{'1st call':>10}")
    for k, r in engines.items():
        decode = f"{r['tok_s_decode_best']:.1f}" if "tok_s_decode_best" in r else "-"
        print(
            f"{k:<22}{decode:>14}{r['tok_s_e2e_best']:>12.1f}"
            f"{100 * r['roofline_fraction']:>9.1f}%{r['warmup_s']:>9.1f}s"
        )
    for k, v in ratios.items():
        print(f"{k} (end to end): {v:.2f}x")
    for k, n in results.get("greedy_agreement_prefix", {}).items():
        print(f"greedy tokens: {herd_key} and {k} agree on the first {n}/{args.tokens}")
    for k, e in results["errors"].items():
        print(f"error in {k}: {e}")
    if herd_key:
        met = engines[herd_key]["meets_70pct_target"]
        print(f"{herd_key} {'meets' if met else 'misses'} the 70% roofline target")
    if herd_key and engines[herd_key].get("dynamo_graphs_compiled_while_timed", 0) > 0:
        print("warning: herd recompiled during the timed runs")
    print(f"total {results['total_s']:.0f} s" + (f"; wrote {args.out}" if args.out else ""))
    return 1 if "herd" in results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
