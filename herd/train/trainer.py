"""The pretraining loop: packed batches -> objective -> AdamW step, with metrics, evaluation,
checkpoints and exact resume.

Run folder (DESIGN.md): config.toml (resolved), metrics.jsonl (one object per logged step: step,
tokens, loss, lr, grad_norm, tokens_per_s, mfu, memory; validation lines add val_loss, val_bpb),
events.jsonl (resume, checkpoints, skipped checkpoints, non-finite gradients), checkpoints/, plots/.

Exact resume: everything a step depends on is in the checkpoint (weights, AdamW moments, the data
cursor, torch and objective RNG states; the learning rate is a function of the step), so on CPU a
run killed at any point and resumed matches the uninterrupted run bit for bit.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from herd.config import RunConfig, dump_toml
from herd.data.batches import PackedBatches
from herd.data.objectives import make_batch
from herd.data.shards import TokenShards
from herd.errors import HerdError
from herd.model.loss import release_workspace
from herd.model.masks import PackedAttention
from herd.model.transformer import build_model
from herd.train import distributed
from herd.train.checkpoint import (
    load_latest,
    resolve_format,
    save_sharded_checkpoint,
    save_training_checkpoint,
)
from herd.train.optim import build_optimizer, set_lr
from herd.train.runlog import RunLog
from herd.train.validation import validate

PEAK_FLOPS = {"cuda": 989e12}  # dense bf16 of an H100/H200 SXM; no peak is claimed for CPUs


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, run: RunConfig, run_dir: Path, resume: bool = False) -> None:
        self.run, self.run_dir = run, Path(run_dir)
        if not run.data.path:
            raise HerdError("data.path is empty: point it at a folder from `herd data prepare`")
        self.rank, self.world_size = distributed.world()
        if self.world_size > 1 and run.train.device == "auto":
            self.device = distributed.local_device()
        else:
            self.device = _device(run.train.device)
        if run.data.batch_size % self.world_size:
            raise HerdError(
                f"data.batch_size {run.data.batch_size} (the global batch) is not divisible by "
                f"the {self.world_size} processes"
            )
        self.rows = slice(
            self.rank * run.data.batch_size // self.world_size,
            (self.rank + 1) * run.data.batch_size // self.world_size,
        )
        amp = run.train.dtype
        self.amp_dtype = {
            "auto": torch.bfloat16 if self.device.type == "cuda" else None,
            "bfloat16": torch.bfloat16,
            "float32": None,
        }.get(amp, "bad")
        if self.amp_dtype == "bad":
            raise HerdError(f"train.dtype '{amp}': expected auto, bfloat16 or float32")
        self.checkpoint_format = resolve_format(run.train.checkpoint_format, self.world_size)
        self.data = TokenShards(run.data.path)
        self.tokenizer = self.data.tokenizer()
        self.token_bytes = torch.as_tensor(self.tokenizer.token_bytes, dtype=torch.long)
        self.model_config = run.model_config(vocab_size=self.tokenizer.vocab_size)
        if run.data.seq_len > self.model_config.max_seq_len:
            raise HerdError(
                f"data.seq_len {run.data.seq_len} does not fit the model's context "
                f"{self.model_config.max_seq_len} (set model.max_seq_len or lower data.seq_len)"
            )
        d = run.data
        self.train_batches = PackedBatches(self.data, "train", d.batch_size, d.seq_len, d.seed)
        try:
            self.val_batches = PackedBatches(self.data, "val", d.batch_size, d.seq_len, d.seed)
        except HerdError as e:
            # Training goes on without validation lines; the user is told why.
            self.val_batches = None
            if self.rank == 0:
                print(f"warning: no validation: {e}", file=sys.stderr)
        self.model = build_model(self.model_config, self.device, torch.float32, run.train.seed)
        self.model.train()
        if run.train.activation_checkpointing:
            from herd.train.parallel import apply_activation_checkpointing

            apply_activation_checkpointing(self.model)
        if self.world_size > 1:
            distributed.apply_fsdp(self.model, self.device)
        self.forward = torch.compile(self.model) if run.train.compile else self.model
        self.optimizer = build_optimizer(self.model, run.optim)
        self.generator = torch.Generator().manual_seed(d.seed + 1)
        from herd.data.objectives import tokenizer_sentinels

        self.sentinels = tokenizer_sentinels(self.tokenizer)
        self.step, self.tokens = 0, 0
        self.log = RunLog(self.run_dir, enabled=self.rank == 0)
        from herd.train.stability import Stability
        from herd.train.stability_stats import layer_groups

        self.stability = Stability(run.stability)
        self.param_groups = layer_groups(self.model)
        from herd.scaling.flops import flops_per_token

        self.flops_per_token = flops_per_token(self.model_config, d.seq_len)
        self._prepare_run_dir(resume)

    # --- run folder and resume -----------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool) -> None:
        if not resume and any((self.run_dir / "checkpoints").glob("step-*")):
            raise HerdError(f"{self.run_dir}: holds checkpoints; resume with --resume")
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(dump_toml(self.run))
            if not resume:
                for f in (self.log.metrics, self.log.events, self.run_dir / "stability.jsonl"):
                    f.unlink(missing_ok=True)
        distributed.barrier()
        if not resume:
            return
        path = self._restore()
        if path is None:
            self.log.event(0, "resume", checkpoint=None)
            return
        self.log.truncate(self.step)
        self.log.event(self.step, "resume", checkpoint=str(path))

    def _restore(self, before: int | None = None) -> Path | None:
        """Load the newest intact checkpoint (below step `before`): weights, optimizer, data
        cursor, RNG and stability state. Returns its path, or None when there is none."""
        found = load_latest(
            self.run_dir / "checkpoints",
            lambda path, why: self.log.event(
                self.step, "checkpoint_skipped", path=str(path), reason=why
            ),
            rank=self.rank,
            before=before,
        )
        if found is None:
            return None
        path, ckpt = found
        tied = self.model_config.tie_embeddings
        if ckpt["format"] == "sharded":  # DCP reshards: any number of processes can load it
            distributed.load_sharded_state(self.model, self.optimizer, path / "train_state", tied)
        else:
            weights = dict(ckpt["model"])
            if tied:
                weights["output.weight"] = weights["embed.weight"]
            distributed.load_full_state(self.model, self.optimizer, weights, ckpt["optimizer"])
        state = ckpt["state"]
        self.step, self.tokens = state["step"], state["tokens"]
        self.train_batches.load_state_dict(state["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.generator.set_state(ckpt["rng"]["objective"])
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.stability.load_state_dict(
            state.get("stability", {}), self.optimizer, self.run.optim.eps
        )
        return path

    def save_checkpoint(self) -> Path:
        rng = {"torch": torch.get_rng_state(), "objective": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "tokens": self.tokens,
            "data": self.train_batches.state_dict(),
            "stability": self.stability.state_dict(),
        }
        path = self.run_dir / "checkpoints"
        if self.checkpoint_format == "sharded":  # nothing gathered: each process writes its own
            path = save_sharded_checkpoint(
                path,
                self.step,
                self.model_config,
                self.model,
                self.optimizer,
                state,
                rng,
                self.tokenizer.files(),
                self.run.train.keep_checkpoints,
                self.device,
            )
            self.log.event(self.step, "checkpoint", path=str(path), format="sharded")
            return path
        weights, optim_state = distributed.full_state(self.model, self.optimizer)
        if self.rank == 0:
            path = save_training_checkpoint(
                path,
                self.step,
                self.model_config,
                weights,
                optim_state,
                state,
                rng,
                self.tokenizer.files(),
                self.run.train.keep_checkpoints,
            )
            self.log.event(self.step, "checkpoint", path=str(path), format="full")
        distributed.barrier()
        return path

    # --- steps ---------------------------------------------------------------------------------

    def _autocast(self):
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches: (loss, grad norm)."""
        run = self.run
        set_lr(self.optimizer, self.step, run.train.steps, run.optim)
        factor = self.stability.lr_factor(self.step)
        if factor != 1.0:  # a lower_lr response in force
            for group in self.optimizer.param_groups:
                group["lr"] *= factor
        total, worst = 0.0, -math.inf
        for _ in range(run.train.grad_accum):
            window, docs = self.train_batches.next_batch()
            inputs, targets, packed = make_batch(
                window, docs, run.data, self.generator, self.sentinels
            )
            # Every process draws the same global batch and keeps its own rows.
            count = int((targets != -100).sum())  # targets in the global batch
            rows = self.rows
            inputs, targets = inputs[rows].to(self.device), targets[rows].to(self.device)
            if packed is not None:
                bidir = packed.bidirectional
                packed = PackedAttention(
                    packed.doc_ids[rows].to(self.device),
                    None if bidir is None else bidir[rows].to(self.device),
                )
            with self._autocast():  # summed float32 cross-entropy, fused with the output layer
                nll = self.forward(inputs, packed=packed, targets=targets)
            # This process's summed loss over all targets of the global batch: once FSDP has
            # averaged gradients over processes they equal the single-process mean-loss gradients.
            loss = nll / max(count, 1)
            (loss * self.world_size / run.train.grad_accum).backward()
            micro = distributed.all_reduce_sum([float(loss.detach())], self.device)[0]
            total, worst = total + micro, max(worst, micro * run.train.grad_accum)
            self.tokens += window.shape[0] * (window.shape[1] - 1)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, run.optim.grad_clip)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        mean = total / run.train.grad_accum
        spike = self.stability.check(mean)
        action = self.stability.response_for(spike)
        if action is not None:
            self.log.event(self.step + 1, "loss_spike", loss=mean, response=action, **spike)
        if not torch.isfinite(norm):  # skip the update rather than poison the weights
            self.optimizer.zero_grad(set_to_none=True)
            self.log.event(self.step, "nonfinite_grad", grad_norm=float(norm))
        elif action in ("skip", "rewind"):
            self.optimizer.zero_grad(set_to_none=True)
            self.log.event(self.step + 1, "update_skipped", loss=mean)
        else:
            self._apply_update(mean, worst, norm, action)
        self.step += 1
        if action == "rewind":
            self._rewind(self.step)
        return mean, float(norm)

    def _apply_update(
        self, loss: float, worst: float, norm: torch.Tensor, action: str | None
    ) -> None:
        """The optimizer step, with the stability monitor around it on its cadence."""
        monitored = self.stability.monitor_step(self.step)
        if monitored:
            self.stability.keep_weights(self.param_groups)
        self.optimizer.step()
        if monitored:
            record = self.stability.measure(
                self.step, self.param_groups, self.optimizer, loss, worst, float(norm)
            )
            self.log.stability(record)
            layers = self.stability.warnings(record)
            if layers:
                self.log.event(self.step + 1, "instability_warning", layers=layers)
        if self.stability.snapshot_step(self.step):
            self.stability.keep_gradients(self.param_groups)
        self.optimizer.zero_grad(set_to_none=True)
        if action == "lower_lr":
            self.stability.lower_lr(self.step)
        elif action == "eps":
            self.stability.raise_eps(self.optimizer, self.run.optim.eps)
        self.stability.accept(loss)

    def _rewind(self, spike_step: int) -> None:
        """Restore the newest checkpoint from before the spike and skip the batches after it."""
        rewinds = self.stability.rewinds + 1  # counted across restores, not restored
        path = self._restore(before=spike_step)
        if path is None:
            self.log.event(spike_step, "rewind_failed", reason="no checkpoint before the spike")
            return
        self.stability.rewinds = rewinds
        cursor = self.train_batches.state_dict()
        # The run from the checkpoint is deterministic: skipping the same batches again would
        # replay the same spike, so the k-th rewind skips k times as many.
        skipped = self.run.stability.skip_batches * self.run.train.grad_accum * rewinds
        self.train_batches.skip(skipped)
        self.log.event(
            spike_step,
            "rewind",
            checkpoint=str(path),
            to_step=self.step,
            skipped_batches=skipped,
            cursor_from=cursor,
            cursor_to=self.train_batches.state_dict(),
        )

    def evaluate(self) -> dict | None:
        """Next-token validation loss and bits per byte on the held-out split."""
        if self.val_batches is None:
            return None
        return validate(
            self.model,
            self.val_batches,
            max_batches=self.run.train.eval_batches,
            rows=self.rows,
            device=self.device,
            document_mask=self.run.data.document_mask,
            token_bytes=self.token_bytes,
            autocast=self._autocast,
        )

    def _memory(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB

    def fit(self, show_progress: bool = True, stop_at: int | None = None) -> dict:
        """Train to train.steps (or stop after step `stop_at`, as an interrupted run would) and
        return the last logged metrics (those already logged when the run had finished)."""
        cfg = self.run.train
        if self.step >= cfg.steps:
            return self.log.metrics_at(self.step)
        last = {}
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=None if show_progress else True,
        )
        clock, tokens_at = time.perf_counter(), self.tokens
        try:
            while self.step < cfg.steps:
                before = self.step
                loss, norm = self.train_step()
                if self.step <= before:  # rewound to an earlier checkpoint: nothing to log or save
                    bar.n = self.step
                    bar.refresh()
                    continue
                bar.update(1)
                final = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or final:
                    now = time.perf_counter()
                    rate = (self.tokens - tokens_at) / max(now - clock, 1e-9)
                    clock, tokens_at = now, self.tokens
                    peak = PEAK_FLOPS.get(self.device.type)
                    last = {
                        "step": self.step,
                        "tokens": self.tokens,
                        "loss": loss,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": norm,
                        "tokens_per_s": rate,
                        "mfu": rate * self.flops_per_token / peak if peak else None,
                        "memory_gib": self._memory(),
                    }
                    self.log.metric(last)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
                if self.step % cfg.eval_every == 0 or final:
                    val = self.evaluate()
                    if val is not None:
                        self.log.metric({"step": self.step, "tokens": self.tokens, **val})
                        last.update(val)
                if self.step % cfg.checkpoint_every == 0 or final:
                    self.save_checkpoint()
                if stop_at is not None and self.step >= stop_at:
                    return last
        finally:
            bar.close()
            # The fused loss keeps its CPU logits buffer (up to 128 MiB) between steps; a
            # finished or stopped run gives it back.
            release_workspace()
        if self.rank == 0:
            from herd.train.plots import plot_run

            plot_run(self.run_dir)
        return last
