"""GPU training benchmark: model FLOPs utilisation (MFU) of herd and transformers on llama3.2-1b.

Trains `llama3.2-1b` (random weights, context 2048) on a lent H100/H200 with the recipe herd's
trainer uses on a GPU: float32 parameters, bfloat16 autocast for the forward pass, float32
cross-entropy over the full vocabulary, backward, fused AdamW step (herd's `build_optimizer`),
zero_grad; batch 4 x 2048 tokens of random ids. herd runs under `torch.compile(model)` (default;
`--no-compile` for eager). transformers' LlamaForCausalLM (sdpa attention) runs the same step on
the same initial weights, eager and, if time allows, compiled. Engines run one after another, each
freed before the next is built, so memory is never shared between two models.

MFU = tokens/s * FLOPs per token / peak FLOP/s, with (PaLM, Chowdhery et al. 2022, appendix B)

    FLOPs per token = 6 * N + 12 * L * d * T
    N = parameters that take part in matrix multiplies: every block, the final norm and the output
        projection; the input embedding table is excluded (a lookup, not a matmul), and a tied
        embedding/output matrix is counted once, as the output projection
    L layers, d model width, T sequence length (the attention term is not halved for causality)
    peak = --peak-tflops (989 dense BF16 TFLOP/s: H100 SXM and H200)

Packed stages (what `herd train` runs with its defaults): herd's own trainer step
(herd/train/step.py: exact accumulation, the fused cross-entropy, clipping, the guarded fused
AdamW step) with every block compiled as `train.compile` does, on packed windows of random-length
documents (`--doc-len` tokens on average) with `document_mask = true`, so attention goes through
compiled FlexAttention and block masks built once per batch: `herd_docmask` (next token) and
`herd_docmask_mskuni` (the causal-masked objective, about 15% of tokens carrying loss; optional).
MFU there counts every token of the window, as the trainer does.

Timing: `--warmup` untimed steps (the compiled engines compile during the first), then `--steps`
timed steps, each ended by a device synchronisation; tokens/s uses the median step, best is
reported too. Results go to --out (bench/gpu.sh passes $OUT/gpu_train.json), rewritten after
every stage so a timeout keeps what finished. An engine that runs out of memory is retried once
with activation checkpointing (then not comparable with the others; the JSON says so).
`--device cpu --preset demo --batch 2 --seq 64 --steps 2` is a quick dry run of every code path on
a CPU (its MFU figures are meaningless; on CPU the packed stages attend through dense masks, since
torch has no FlexAttention backward there).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import Results, log, quiet, sync

import herd
from herd.model.config import ModelConfig
from herd.train.config import OptimConfig
from herd.train.optim import build_optimizer
from herd.train.parallel import apply_activation_checkpointing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Training MFU on a GPU (bf16 autocast, fp32 parameters, fused AdamW): herd compiled "
            "against transformers' LlamaForCausalLM, eager and compiled, on the same weights."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="llama3.2-1b", help="herd preset (random weights)")
    p.add_argument("--seq", type=int, default=2048, help="tokens per sequence (= max_seq_len)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per engine")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per engine (compilation happens here)"
    )
    p.add_argument("--device", default="cuda", help="torch device (cpu for a dry run)")
    p.add_argument(
        "--amp-dtype",
        default="bfloat16",
        choices=["bfloat16", "float16", "none"],
        help="autocast dtype of the forward pass (parameters stay float32); none: plain float32",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile the herd model (the trainer's train.compile)",
    )
    p.add_argument(
        "--herd-eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --compile, also time herd eager (the like-for-like partner of transformers "
        "eager); skipped when --budget-s has passed",
    )
    p.add_argument(
        "--hf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time transformers' LlamaForCausalLM, eager (sdpa attention)",
    )
    p.add_argument(
        "--hf-compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time torch.compile(LlamaForCausalLM); skipped when --budget-s has passed",
    )
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute every block in the backward pass (all engines); use when memory runs out",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="peak dense TFLOP/s of the device in --amp-dtype (989: H100 SXM / H200 BF16)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    p.add_argument(
        "--doc-len",
        type=int,
        default=512,
        help="mean document length of the packed (document-masked) stages",
    )
    p.add_argument(
        "--packed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time herd's trainer step on packed, document-masked batches (FlexAttention "
        "on CUDA): next token, then the masked objective mskuni if time allows",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="skip the optional stages (herd eager, transformers compiled) that would start after "
        "this many seconds",
    )
    default_json = Path(os.environ["OUT"]) / "gpu_train.json" if os.environ.get("OUT") else None
    p.add_argument(
        "--out",
        type=Path,
        default=default_json,
        help="write results here ($OUT/gpu_train.json when OUT is set)",
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch < 1 or args.seq < 2:
        p.error("--steps, --warmup and --batch must be >= 1, --seq >= 2")
    return args


def free_memory(device: torch.device) -> None:
    """Drop compiled graphs and cached blocks so the next engine starts from an empty device."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- FLOPs --------------------------------------------------------------------------------------


def flops_per_token(config: ModelConfig, seq: int) -> int:
    """herd's one FLOP count (`ModelConfig.flops_per_token`), also behind the trainer's MFU."""
    return int(config.flops_per_token(seq))


# --- engines ------------------------------------------------------------------------------------


class Engine:
    """A model to train, its optimizer and a function from token ids to logits [B, T, V]; or,
    for herd's trainer step, `step(i)` running one step on the i-th batch and returning the loss."""

    def __init__(
        self, name: str, model: torch.nn.Module, optimizer, logits: Callable | None, step=None
    ):
        self.name = name
        self.model = model
        self.optimizer = optimizer
        self.logits = logits
        self.step = step


def hf_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device):
    """The AdamW herd's `build_optimizer` makes, for any model: decay on >= 2-D parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=True if fused else None,
        foreach=None if fused else True,
    )


def herd_engine(config, args, device, compile: bool, checkpointing: bool) -> Engine:
    model = herd.build_model(config, device=device, dtype=torch.float32, seed=args.seed).train()
    if checkpointing:
        apply_activation_checkpointing(model)  # before compilation, as the trainer does
    forward = torch.compile(model) if compile else model
    optimizer = build_optimizer(model, OptimConfig())
    return Engine("herd", model, optimizer, lambda tokens: forward(tokens))


def packed_batches(config: ModelConfig, args, objective: str, count: int) -> list:
    """herd StepBatches (one micro-batch each) of random documents packed into windows, shaped
    by herd's objectives exactly as the trainer's loader shapes them."""
    from herd.data.config import DataConfig
    from herd.data.loader import StepBatch
    from herd.data.objectives import IGNORE_INDEX, make_batch

    data = DataConfig(seq_len=args.seq, batch_size=args.batch, objective=objective)
    sentinels = list(range(config.vocab_size - 4, config.vocab_size))
    gen = torch.Generator().manual_seed(args.seed + 2)
    out = []
    for b in range(count):
        window = torch.randint(0, config.vocab_size - 4, (args.batch, args.seq + 1), generator=gen)
        # document lengths uniform on [16, 2 * mean - 16], at least 4 documents per window
        mean = min(args.doc_len, args.seq // 4)
        shape = (args.batch, args.seq + 1)
        lengths = torch.randint(16, max(17, 2 * mean - 16), shape, generator=gen)
        starts = torch.zeros(args.batch, args.seq + 1, dtype=torch.bool)
        for row in range(args.batch):
            at = torch.cumsum(lengths[row], 0)
            starts[row, at[at < args.seq + 1]] = True
        docs = torch.cumsum(starts.long(), dim=1)
        seeds = [b * args.batch + row for row in range(args.batch)]
        micro = make_batch(window, docs, data, seeds, sentinels)
        counts = torch.tensor([int((micro.targets != IGNORE_INDEX).sum())])
        out.append(StepBatch([micro], counts))
    return out


def herd_trainer_engine(config, args, device, checkpointing: bool, batches: list) -> Engine:
    """herd's trainer step: blocks compiled in place, fused loss, block masks on CUDA."""
    from herd.train.parallel import apply_compile
    from herd.train.step import accumulate_gradients, clip_gradients, guarded_update

    model = herd.build_model(config, device=device, dtype=torch.float32, seed=args.seed).train()
    if checkpointing:
        apply_activation_checkpointing(model)
    if args.compile:
        apply_compile(model)
    optimizer = build_optimizer(model, OptimConfig())
    amp = None if args.amp_dtype == "none" else getattr(torch, args.amp_dtype)
    keep = torch.zeros((), device=device)

    def autocast():
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def step(i: int) -> torch.Tensor:
        batch = batches[i % len(batches)]
        loss, _ = accumulate_gradients(model, batch, device, autocast)
        clip_gradients(model, 1.0)
        guarded_update(optimizer, keep)
        optimizer.zero_grad(set_to_none=True)
        return loss

    return Engine("herd", model, optimizer, None, step)


def hf_engine(folder: Path, args, device, compile: bool, checkpointing: bool) -> Engine:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa"
    ).to(device)
    model.config.use_cache = False
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = torch.compile(model) if compile else model
    optimizer = hf_optimizer(model, OptimConfig(), device)
    return Engine(
        "transformers",
        model,
        optimizer,
        lambda tokens: forward(input_ids=tokens, use_cache=False).logits,
    )


def train_step(engine: Engine, inputs, targets, device, amp_dtype) -> torch.Tensor:
    """Forward under autocast, float32 cross-entropy, backward, optimizer step, zero_grad."""
    with torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        logits = engine.logits(inputs)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    del logits
    loss.backward()
    engine.optimizer.step()
    engine.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure(engine: Engine, batches, args, device, amp_dtype, flops: int) -> dict:
    tokens = args.batch * args.seq
    warm_s, losses, seconds = [], [], []
    for i in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        if engine.step is not None:
            loss = engine.step(i)
        else:
            inputs, targets = batches[i % len(batches)]
            loss = train_step(engine, inputs, targets, device, amp_dtype)
        sync(device)
        elapsed = time.perf_counter() - start
        (warm_s if i < args.warmup else seconds).append(elapsed)
        losses.append(float(loss))
        if i == 0:
            log(f"  first step {elapsed:.1f} s (compilation, if any), loss {losses[0]:.4f}")
    median = statistics.median(seconds)
    result = {
        "tok_s_median": tokens / median,
        "tok_s_best": tokens / min(seconds),
        "step_ms_median": 1e3 * median,
        "step_ms": [1e3 * s for s in seconds],
        "warmup_s": warm_s,
        "losses": losses,
        "first_loss": losses[0],
    }
    result["mfu_median"] = result["tok_s_median"] * flops / (args.peak_tflops * 1e12)
    result["mfu_best"] = result["tok_s_best"] * flops / (args.peak_tflops * 1e12)
    if device.type == "cuda":
        result["peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    device = torch.device(args.device)
    amp_dtype = None if args.amp_dtype == "none" else getattr(torch, args.amp_dtype)
    config = herd.preset(args.preset).replace(max_seq_len=args.seq)
    n_matmul = config.dense_params()
    flops = flops_per_token(config, args.seq)
    results = Results(
        args.out,
        device,
        preset=args.preset,
        batch=args.batch,
        seq=args.seq,
        tokens_per_step=args.batch * args.seq,
        params=config.num_params(),
        mfu_params_N=n_matmul,
        # For reference: the count with the embedding table removed even where it is tied.
        params_excluding_embedding_table=config.num_params() - config.vocab_size * config.dim,
        flops_per_token=flops,
        peak_tflops=args.peak_tflops,
        mfu_definition=(
            "MFU = tokens/s * (6*N + 12*L*d*T) / peak; N = parameters in matmuls (all but the "
            "input embedding table; a tied embedding/output matrix counted once, as the output "
            "projection); L layers, d width, T sequence length; causal attention not halved"
        ),
        recipe=(
            f"fp32 parameters, {args.amp_dtype} autocast forward, fp32 cross-entropy over the "
            "full vocabulary, backward, AdamW (fused on CUDA) step, zero_grad"
        ),
        activation_checkpointing=args.activation_checkpointing,
    )
    log(
        f"{args.preset}: {results['params'] / 1e9:.3f}B parameters, N = {n_matmul / 1e9:.3f}B, "
        f"{flops / 1e9:.2f} GFLOP/token at T = {args.seq}; peak {args.peak_tflops:g} TFLOP/s"
    )

    save = results.save
    save()
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = []
    for _ in range(min(args.warmup + args.steps, 4)):  # a few distinct batches, cycled
        window = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), generator=gen)
        window = window.to(device)
        batches.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))

    tmp = tempfile.TemporaryDirectory(prefix="herd-gpu-train-")
    hf_folder = Path(tmp.name) / "hf"

    def run(label: str, build: Callable[[bool], Engine]) -> None:
        """Build, measure, free; on running out of memory retry once with checkpointing."""
        checkpointing = args.activation_checkpointing
        for attempt in range(2):
            engine = None
            free_memory(device)
            try:
                log(f"{label}: building" + (" (activation checkpointing)" if checkpointing else ""))
                engine = build(checkpointing)
                r = measure(engine, batches, args, device, amp_dtype, flops)
                r["activation_checkpointing"] = checkpointing
                results["engines"][label] = r
                log(
                    f"{label}: {r['tok_s_median']:.0f} tok/s, MFU {100 * r['mfu_median']:.1f}% "
                    f"(best {100 * r['mfu_best']:.1f}%), step {r['step_ms_median']:.0f} ms"
                    + (f", peak {r['peak_memory_GiB']:.1f} GiB" if "peak_memory_GiB" in r else "")
                )
                return
            except torch.cuda.OutOfMemoryError as e:
                msg = f"OutOfMemoryError: {str(e).splitlines()[0]}"
                if checkpointing or attempt:
                    results.fail(label, msg)
                    return
                log(f"{label}: out of memory; retrying with activation checkpointing")
                checkpointing = True
            except Exception as e:
                results.fail(label, e)
                return
            finally:
                del engine
                free_memory(device)
                save()

    def prepare_hf() -> bool:
        """Write the initial herd weights as a transformers folder (seeded: herd rebuilds them)."""
        try:
            import transformers
            from transformers.utils import logging as hf_logging

            from herd.checkpoint.hf import write_hf_folder

            hf_logging.disable_progress_bar()
            results["transformers"] = transformers.__version__
            model = herd.build_model(config, device=device, dtype=torch.float32, seed=args.seed)
            state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
            del model
            write_hf_folder(config, state, hf_folder, overwrite=True)
            log(f"transformers {transformers.__version__}: wrote the initial weights")
            return True
        except Exception as e:
            results.fail("hf_prepare", e)
            return False
        finally:
            free_memory(device)
            save()

    hf_ready = (args.hf or args.hf_compile) and prepare_hf()
    herd_label = "herd_compiled" if args.compile else "herd_eager"
    run(herd_label, lambda ckpt: herd_engine(config, args, device, args.compile, ckpt))
    count = min(args.warmup + args.steps, 4)
    if args.packed:
        docmask = packed_batches(config, args, "nxtuni", count)
        run("herd_docmask", lambda ckpt: herd_trainer_engine(config, args, device, ckpt, docmask))
    if args.packed and results.within_budget("herd_docmask_mskuni", args.budget_s):
        masked = packed_batches(config, args, "mskuni", count)
        results["mskuni_loss_share"] = sum(int(b.counts.sum()) for b in masked) / (
            count * args.batch * args.seq
        )
        run(
            "herd_docmask_mskuni",
            lambda ckpt: herd_trainer_engine(config, args, device, ckpt, masked),
        )
    if hf_ready and args.hf:
        run("transformers_eager", lambda ckpt: hf_engine(hf_folder, args, device, False, ckpt))
    if args.compile and args.herd_eager and results.within_budget("herd_eager", args.budget_s):
        run("herd_eager", lambda ckpt: herd_engine(config, args, device, False, ckpt))
    if (
        hf_ready
        and args.hf_compile
        and results.within_budget("transformers_compiled", args.budget_s)
    ):
        run("transformers_compiled", lambda ckpt: hf_engine(hf_folder, args, device, True, ckpt))
    tmp.cleanup()

    # --- summary ---------------------------------------------------------------------------------
    engines = results["engines"]
    ratios = {}
    for h, t in (
        ("herd_compiled", "transformers_eager"),
        ("herd_compiled", "transformers_compiled"),
        ("herd_eager", "transformers_eager"),
    ):
        if h in engines and t in engines:
            ratios[f"{h}/{t}"] = engines[h]["tok_s_median"] / engines[t]["tok_s_median"]
    results["ratios"] = ratios
    # Same seed, same first batch, nothing updated yet: first-step losses should agree up to
    # bf16 rounding (the compiled and eager graphs round differently too). The packed stages
    # train on other batches.
    engines = {k: r for k, r in engines.items() if not k.startswith("herd_docmask")}
    first = {k: r["first_loss"] for k, r in engines.items()}
    if len(first) > 1:
        results["first_loss_spread"] = max(first.values()) - min(first.values())
    # After one AdamW update the engines should still agree (same batches): a wrong gradient
    # (say, a compiled loss whose backward returns zeros) shows here and not in the first loss.
    second = {k: r["losses"][1] for k, r in engines.items() if len(r["losses"]) > 1}
    if len(second) > 1:
        results["second_loss_spread"] = max(second.values()) - min(second.values())
    save()

    print()
    print(
        f"device: {results.get('gpu', device.type)}; {args.preset}, batch {args.batch} x "
        f"{args.seq}, {args.amp_dtype} autocast, fp32 params, AdamW"
    )
    print(results["mfu_definition"])
    print(f"  N = {n_matmul / 1e9:.4f}B, 6N + 12LdT = {flops / 1e9:.3f} GFLOP/token")
    print(
        f"{'engine':<24}{'tok/s':>10}{'MFU':>8}{'best':>8}{'step ms':>10}{'1st step':>10}{'GiB':>7}"
    )
    for k, r in results["engines"].items():
        mem = f"{r['peak_memory_GiB']:.1f}" if "peak_memory_GiB" in r else "-"
        ckpt = " (act. ckpt)" if r["activation_checkpointing"] else ""
        print(
            f"{k + ckpt:<24}{r['tok_s_median']:>10.0f}{100 * r['mfu_median']:>7.1f}%"
            f"{100 * r['mfu_best']:>7.1f}%{r['step_ms_median']:>10.1f}{r['warmup_s'][0]:>9.1f}s"
            f"{mem:>7}"
        )
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if "first_loss_spread" in results:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in first.items())
        print(f"first-step losses: {losses} (spread {results['first_loss_spread']:.2g})")
    if "second_loss_spread" in results:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in second.items())
        print(
            f"second-step losses, after one update: {losses} "
            f"(spread {results['second_loss_spread']:.2g})"
        )
    for k, e in results["errors"].items():
        print(f"error in {k}: {e}")
    print(f"total {results['total_s']:.0f} s" + (f"; wrote {args.out}" if args.out else ""))
    return 1 if herd_label in results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
