"""CPU decode benchmark: herd (eager and compiled) against transformers, optionally llama2.c.

Decodes a fixed number of new tokens (256 by default), batch 1, float32, greedy, from a small
llama2.c-shaped model (the `demo` preset, ~15M parameters, random weights; or `--checkpoint`), and
prints tokens/s for each engine and the ratios. Everything runs in one process on the same weights:
the transformers model is loaded from a Hugging Face folder that herd writes from its own state dict.

    .venv/bin/python bench/generate.py
    .venv/bin/python bench/generate.py --write-llama2c /tmp/demo.bin \\
        --llama2c-run /path/to/llama2.c/run          # also times llama2.c's `run` on the same weights

Timing: each engine is warmed up once, then timed over `--repeats` full runs; a run is one call
that prefills the prompt and produces all new tokens, and tokens/s is new tokens / wall seconds.
herd's compiled path pays a one-time compilation (~30 s on CPU), reported separately; its warm-up
is a full-length run because the compiled step is specialised to the KV-cache length.

Threads: `--threads` defaults to what torch sees. On small virtual machines OpenMP's spinning
workers can make multi-threaded runs erratic (seen here: the same 2-thread decode step took 11 ms in
one process and 100+ ms in the next); compare with `--threads 1` or `OMP_WAIT_POLICY=passive`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from common import common_prefix
from llama2c_peer import (
    BOS,
    llama2c_text,
    read_llama2c_vocab,
    run_llama2c,
    verify_llama2c,
    write_llama2c,
)

import herd
from herd.checkpoint import io
from herd.checkpoint.convert import convert, read_checkpoint
from herd.model.config import ModelConfig
from herd.model.transformer import Transformer

# "Once upon a time" in the Llama 2 sentencepiece vocabulary (32000 tokens), after BOS (1). llama2.c's
# `run` encodes --prompt-text itself; the two must agree for its output to be comparable.
DEFAULT_PROMPT_IDS = "1,9038,2501,263,931"
DEFAULT_PROMPT_TEXT = "Once upon a time"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Batch-1 float32 greedy decode throughput on CPU: herd eager, herd compiled and "
            "transformers' generate on the same weights (and optionally llama2.c's run binary)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="any checkpoint herd.load reads (llama2.c .bin, herd/HF/Meta folder) to benchmark "
        "instead of random weights; its context is extended if prompt + tokens do not fit",
    )
    p.add_argument(
        "--preset", default="demo", help="architecture for random weights (without --checkpoint)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument(
        "--weight-scale",
        type=float,
        default=4.0,
        help="multiply the random blocks' matrices by this (not embeddings or norms). With herd's "
        "N(0, 0.02) init (scale 1) a tied-embedding model just repeats its last prompt token, "
        "which makes the token-agreement checks vacuous; speed does not depend on the values",
    )
    p.add_argument("--tokens", type=int, default=256, help="new tokens per timed run")
    p.add_argument(
        "--prompt-ids",
        default=DEFAULT_PROMPT_IDS,
        help="comma-separated prompt token ids for herd and transformers (BOS first)",
    )
    p.add_argument(
        "--prompt-text",
        default=DEFAULT_PROMPT_TEXT,
        help="the same prompt as text, for llama2.c's run (it tokenizes the prompt itself)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine")
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads (and OMP_NUM_THREADS for llama2.c)",
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated engines not to run: eager, compiled, hf",
    )
    p.add_argument(
        "--write-llama2c",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the benchmarked weights as a llama2.c legacy (v0) .bin file, verify it by "
        "reloading with herd, and use it for --llama2c-run unless --llama2c-model is given",
    )
    p.add_argument(
        "--llama2c-run",
        type=Path,
        default=None,
        metavar="BINARY",
        help="path to a compiled llama2.c `run` binary; times it on the same weights",
    )
    p.add_argument(
        "--llama2c-model",
        type=Path,
        default=None,
        metavar="FILE",
        help="llama2.c .bin for --llama2c-run (None: the --write-llama2c file, else a .bin --checkpoint)",
    )
    p.add_argument(
        "--llama2c-tokenizer",
        type=Path,
        default=None,
        metavar="FILE",
        help="llama2.c tokenizer.bin (None: tokenizer.bin next to the run binary)",
    )
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="keep inductor's autotuning tables and transformers' progress bars",
    )
    args = p.parse_args(argv)
    try:
        args.prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    except ValueError:
        p.error(f"--prompt-ids: expected comma-separated integers, got {args.prompt_ids!r}")
    if not args.prompt:
        p.error("--prompt-ids: at least one token id is needed")
    if args.tokens < 2 or args.repeats < 1 or args.threads < 1:
        p.error("--tokens must be >= 2, --repeats and --threads >= 1")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {"eager", "compiled", "hf"}
    if unknown:
        p.error(f"--skip: unknown engine(s) {sorted(unknown)} (expected eager, compiled, hf)")
    return args


# --- model ------------------------------------------------------------------------------------


def context_for(config: ModelConfig, needed: int) -> ModelConfig:
    """`config`, with the context raised to a power of two >= `needed` if it is too short."""
    if config.max_seq_len >= needed:
        return config
    return config.replace(max_seq_len=1 << (needed - 1).bit_length())


@torch.no_grad()
def scale_matrices(model: Transformer, scale: float) -> None:
    """Multiply every attention and feed-forward matrix by `scale` (embeddings, norms untouched)."""
    if scale != 1:
        for name, w in model.named_parameters():
            if name.startswith("layers.") and not name.endswith("norm.weight"):
                w.mul_(scale)


def build(args: argparse.Namespace) -> tuple[Transformer, str]:
    needed = len(args.prompt) + args.tokens
    if args.checkpoint is None:
        config = context_for(herd.preset(args.preset), needed)
        model = herd.build_model(config, device="cpu", dtype=torch.float32, seed=args.seed)
        scale_matrices(model, args.weight_scale)
        source = f"preset {args.preset}, random weights (seed {args.seed}"
        source += f", block matrices x{args.weight_scale:g})" if args.weight_scale != 1 else ")"
    else:
        config, state_dict = read_checkpoint(args.checkpoint)
        original = config.max_seq_len
        config = context_for(config, needed)
        model = io.instantiate(config, state_dict, "cpu", torch.float32, str(args.checkpoint))
        source = str(args.checkpoint)
        if config.max_seq_len != original:
            source += f" (context {original} -> {config.max_seq_len})"
    if max(args.prompt) >= config.vocab_size or min(args.prompt) < 0:
        raise SystemExit(f"--prompt-ids must lie in [0, {config.vocab_size}) for this model")
    return model.eval(), source


def hf_copy(model: Transformer, folder: Path):
    """transformers' LlamaForCausalLM holding `model`'s weights: herd folder -> HF folder -> load."""
    from transformers import LlamaForCausalLM

    herd_dir, hf_dir = folder / "herd", folder / "hf"
    io.save_herd_folder(model.config, model.state_dict(), herd_dir, overwrite=True)
    convert(herd_dir, hf_dir, dst_format="hf", overwrite=True)
    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    # No end-of-sequence token: every run produces exactly the requested number of tokens.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


# --- timing -----------------------------------------------------------------------------------


def timed(fn: Callable[[], list[int]]) -> tuple[float, list[int]]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def summary(seconds: list[float], tokens: int) -> dict:
    rates = [tokens / s for s in seconds]
    return {
        "tok_s_best": max(rates),
        "tok_s_median": statistics.median(rates),
        "ms_per_token_best": 1000.0 * min(seconds) / tokens,
        "seconds": seconds,
    }


def bench_herd(model, prompt, tokens, repeats, compile: bool) -> tuple[dict, list[int]]:
    def run(n: int) -> list[int]:
        return herd.generate(model, prompt, max_new_tokens=n, temperature=0.0, compile=compile)

    # Compiled: the warm-up must be full length, since the step is specialised to the cache length
    # (a power of two >= prompt + tokens) and a short run would compile a different shape.
    warm_s, _ = timed(lambda: run(tokens if compile else min(tokens, 8)))
    seconds, out = [], []
    for _ in range(repeats):
        s, out = timed(lambda: run(tokens))
        seconds.append(s)
    result = summary(seconds, tokens)
    result["warmup_s"] = warm_s
    if compile:
        result["compile_s"] = max(0.0, warm_s - min(seconds))
    return result, out


def bench_hf(hf, prompt, tokens, repeats) -> tuple[dict, list[int]]:
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def run(n: int) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
            )
        new = out[0, len(prompt) :].tolist()
        if len(new) != n:
            raise RuntimeError(f"transformers produced {len(new)} tokens, expected {n}")
        return new

    warm_s, _ = timed(lambda: run(min(tokens, 8)))
    seconds, out = [], []
    for _ in range(repeats):
        s, out = timed(lambda: run(tokens))
        seconds.append(s)
    result = summary(seconds, tokens)
    result["warmup_s"] = warm_s
    return result, out


# --- main -------------------------------------------------------------------------------------


def quiet() -> None:
    """Silence a storage deprecation warning and transformers' loading progress bar."""
    import transformers

    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        quiet()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, source = build(args)
    c = model.config
    params = sum(p.numel() for p in model.parameters())  # a tied matrix is counted once
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"model: {source}")
    print(
        f"  dim {c.dim}, layers {c.n_layers}, heads {c.n_heads}/{c.n_kv_heads}, ffn {c.ffn_dim}, "
        f"vocab {c.vocab_size}, context {c.max_seq_len}, {params / 1e6:.2f}M parameters"
    )
    print(
        f"torch {torch.__version__}, {args.threads} thread(s) on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}, OMP_WAIT_POLICY={wait_policy}); "
        f"prompt {len(args.prompt)} tokens, {args.tokens} new tokens, best of {args.repeats}"
    )
    results: dict = {
        "model": source,
        "params": params,
        "config": c.to_dict(),
        "threads": args.threads,
        "omp_wait_policy": wait_policy,
        "tokens": args.tokens,
        "prompt_ids": args.prompt,
        "repeats": args.repeats,
        "weight_scale": None if args.checkpoint else args.weight_scale,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "engines": {},
    }
    engines = results["engines"]
    outputs: dict[str, list[int]] = {}

    llama2c_file = args.llama2c_model
    if args.write_llama2c is not None:
        write_llama2c(model, args.write_llama2c)
        diff = verify_llama2c(model, args.write_llama2c, args.prompt)
        print(f"wrote {args.write_llama2c}: herd.load logits max |diff| {diff:.2e}")
        results["llama2c_file"] = {"path": str(args.write_llama2c), "max_abs_logit_diff": diff}
        if diff >= 1e-4:
            raise SystemExit(f"{args.write_llama2c}: reloaded logits differ by {diff:.2e}")
        llama2c_file = llama2c_file or args.write_llama2c
    if llama2c_file is None and args.checkpoint is not None and args.checkpoint.suffix == ".bin":
        llama2c_file = args.checkpoint

    hf = None
    tmp = Path(tempfile.mkdtemp(prefix="herd-bench-"))
    try:
        if "hf" not in args.skip:
            import transformers

            hf = hf_copy(model, tmp)
            results["transformers"] = transformers.__version__
            with torch.inference_mode():
                tokens = torch.tensor([args.prompt])
                diff = float((model(tokens) - hf(tokens).logits).abs().max())
            print(f"transformers {transformers.__version__}: prompt logits max |diff| {diff:.2e}")
            results["hf_max_abs_logit_diff"] = diff
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Eager before compiled: the eager path re-lays out the output projection in place (same values,
    # column-major strides). A step compiled (with frozen weights) before that relayout keeps
    # running without recompiling but reads the new storage with the old strides: wrong tokens.
    if "eager" not in args.skip:
        print("herd eager ...", flush=True)
        engines["herd_eager"], outputs["herd_eager"] = bench_herd(
            model, args.prompt, args.tokens, args.repeats, compile=False
        )
    if "compiled" not in args.skip:
        print("herd compiled (first call compiles, ~30 s or more) ...", flush=True)
        engines["herd_compiled"], outputs["herd_compiled"] = bench_herd(
            model, args.prompt, args.tokens, args.repeats, compile=True
        )
    if hf is not None:
        print("transformers generate ...", flush=True)
        engines["transformers"], outputs["transformers"] = bench_hf(
            hf, args.prompt, args.tokens, args.repeats
        )

    if args.llama2c_run is not None:
        if llama2c_file is None:
            raise SystemExit("--llama2c-run needs --llama2c-model, --write-llama2c or a .bin")
        from herd.checkpoint.llama2c import read_llama2c_config

        lc = read_llama2c_config(llama2c_file)
        same = (lc.dim, lc.n_layers, lc.n_heads, lc.ffn_dim, lc.vocab_size) == (
            c.dim,
            c.n_layers,
            c.n_heads,
            c.ffn_dim,
            c.vocab_size,
        )
        if not same:
            print(f"warning: {llama2c_file} has another shape than the benchmarked model")
        # run.c forwards `steps` positions (prompt included) and samples from the last prompt one.
        steps = len(args.prompt) + args.tokens - 1
        if steps > lc.max_seq_len:
            print(
                f"warning: {llama2c_file} has context {lc.max_seq_len}; llama2.c runs "
                f"{lc.max_seq_len} steps (write the file with --write-llama2c for a longer one)"
            )
            steps = lc.max_seq_len
        tokenizer = args.llama2c_tokenizer or args.llama2c_run.parent / "tokenizer.bin"
        print(f"llama2.c {args.llama2c_run} on {llama2c_file} ...", flush=True)
        rates, stdout = run_llama2c(
            args.llama2c_run,
            llama2c_file,
            tokenizer,
            args.prompt_text,
            steps,
            args.threads,
            args.repeats,
        )
        entry = {
            "tok_s_best": max(rates),
            "tok_s_median": statistics.median(rates),
            "ms_per_token_best": 1000.0 / max(rates),
            "tok_s_runs": rates,
            "model_file": str(llama2c_file),
            "steps": steps,
            "note": "llama2.c's own rate: positions forwarded after the first / time",
        }
        reference = outputs.get("herd_eager") or outputs.get("herd_compiled")
        if reference is not None and tokenizer.is_file():
            vocab = read_llama2c_vocab(tokenizer)
            if len(vocab) == c.vocab_size:
                generated = reference[: steps - len(args.prompt) + 1]
                expected = llama2c_text(vocab, args.prompt + generated)
                agree = common_prefix(expected, stdout)
                entry["text_agreement_bytes"] = [agree, len(expected)]
                if BOS in generated:
                    entry["stops_at_bos_after"] = generated.index(BOS) + 1
        engines["llama2c"] = entry

    # --- report --------------------------------------------------------------------------------
    names = {
        "herd_eager": "herd eager",
        "herd_compiled": "herd compiled",
        "transformers": "transformers",
        "llama2c": "llama2.c run",
    }
    print()
    print(f"{'engine':<16}{'tok/s best':>12}{'tok/s median':>14}{'ms/token':>10}  notes")
    for key, r in engines.items():
        note = ""
        if "compile_s" in r:
            note = f"first call {r['warmup_s']:.1f} s (compile ~{r['compile_s']:.1f} s)"
        if key == "llama2c":
            note = f"OMP_NUM_THREADS={args.threads}, run's own tok/s"
        print(
            f"{names[key]:<16}{r['tok_s_best']:>12.1f}{r['tok_s_median']:>14.1f}"
            f"{r['ms_per_token_best']:>10.2f}  {note}"
        )
    ratios = {}
    for a in ("herd_eager", "herd_compiled"):
        for b in ("transformers", "llama2c"):
            if a in engines and b in engines:
                ratios[f"{a}/{b}"] = engines[a]["tok_s_best"] / engines[b]["tok_s_best"]
    results["ratios"] = ratios
    print()
    for key, value in ratios.items():
        a, b = key.split("/")
        print(f"{names[a]} / {names[b]}: {value:.2f}x")

    agreement = {}
    ref_key = "herd_eager" if "herd_eager" in outputs else "herd_compiled"
    for key in outputs:
        if key != ref_key and ref_key in outputs:
            agreement[f"{ref_key}~{key}"] = common_prefix(outputs[ref_key], outputs[key])
    results["greedy_agreement_prefix"] = agreement
    for key, n in agreement.items():
        a, b = key.split("~")
        print(f"greedy tokens: {names[a]} and {names[b]} agree on the first {n}/{args.tokens}")
    if "llama2c" in engines and "text_agreement_bytes" in engines["llama2c"]:
        agree, total = engines["llama2c"]["text_agreement_bytes"]
        print(f"llama2.c's printed text matches herd's greedy tokens for {agree}/{total} bytes")
        if "stops_at_bos_after" in engines["llama2c"]:
            n = engines["llama2c"]["stops_at_bos_after"]
            print(f"note: greedy output hits BOS at token {n}; llama2.c stops there")
    if any(n < args.tokens for n in agreement.values()):
        print("(random weights give near-tied logits, so greedy paths may part; not an error)")

    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
