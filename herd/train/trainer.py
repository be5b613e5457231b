"""The pretraining loop: packed batches -> objective -> AdamW step, with metrics, evaluation,
checkpoints and exact resume.

Run folder (DESIGN.md): config.toml (resolved), metrics.jsonl (one object per logged step: step,
tokens, loss, lr, grad_norm, tokens_per_s, mfu, memory; validation lines add val_loss, val_bpb),
events.jsonl (resume, checkpoints, skipped checkpoints, non-finite gradients, spikes),
stability.jsonl, checkpoints/, plots/.

No host synchronisation between log steps: a step's loss, gradient norm and verdict (whether its
update was skipped: non-finite gradients, or a loss spike under a response that drops them) stay
on the device, and the optimizer reads the verdict itself (herd/train/step.py). The host reads
the pending verdicts in one transfer on log, monitor, evaluation and checkpoint steps
(herd/train/verdicts.py), and logs their events then, with the steps they belong to.

Exact resume: everything a step depends on is in the checkpoint (weights, AdamW moments, the data
cursor, torch RNG states, the spike detector's window and the monitor's kept gradients; the
learning rate is a function of the step, and batches draw from per-row seeds), so on CPU a run
killed at any point and resumed writes the same weights and the same log lines as the
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm

from herd.data.loader import StepLoader
from herd.errors import HerdError
from herd.model.families import build_model
from herd.model.lora import apply_lora, peft_config_dict, peft_names
from herd.model.loss import release_workspace
from herd.train import distributed, throughput
from herd.train.adapters import (
    adapter_data,
    added_parts,
    freeze_for_adapter,
    is_adapter_run,
    load_start_weights,
)
from herd.train.checkpoint import (
    check_same_model,
    load_latest,
    remove_stale_temporaries,
    resolve_format,
    save_sharded_checkpoint,
    save_training_checkpoint,
)
from herd.train.config import RunConfig, dump_toml
from herd.train.optim import build_optimizer, set_lr
from herd.train.parallel import parallelize
from herd.train.runlog import RunLog
from herd.train.spikes import SpikeDetector
from herd.train.stability import Stability
from herd.train.stability_stats import layer_groups
from herd.train.step import accumulate_gradients, clip_gradients, guarded_update, nll_sum
from herd.train.training_data import TrainingData, pretraining_data
from herd.train.validation import validate
from herd.train.verdicts import Verdicts

PARAM_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Trainer:
    def __init__(
        self,
        run: RunConfig,
        run_dir: Path,
        resume: bool = False,
        data: TrainingData | None = None,
    ) -> None:
        self.run, self.run_dir = run, Path(run_dir)
        if not resume and any((self.run_dir / "checkpoints").glob("step-*")):
            # before any work (a DPO reference pass, say) that a refused run would waste
            raise HerdError(f"{self.run_dir}: holds checkpoints; resume with --resume")
        if not run.data.path:
            raise HerdError("data.path is empty: point it at a folder from `herd data prepare`")
        d, t = run.data, run.train
        self.rank, self.world_size, self.device, self.rows = distributed.place(
            t.device, d.batch_size
        )
        self.amp_dtype = {
            "auto": torch.bfloat16 if self.device.type == "cuda" else None,
            "bfloat16": torch.bfloat16,
            "float32": None,
        }.get(t.dtype, "bad")
        if self.amp_dtype == "bad":
            raise HerdError(f"train.dtype '{t.dtype}': expected auto, bfloat16 or float32")
        if t.param_dtype not in PARAM_DTYPES:
            raise HerdError(f"train.param_dtype '{t.param_dtype}': expected float32 or float64")
        self.lora = run.lora.lora_config()  # None: every weight trains
        self.checkpoint_format = resolve_format(
            t.checkpoint_format, self.world_size, self.lora is not None
        )
        adapter = is_adapter_run(run)
        # `herd train` of a vision or speech model: image- or audio-text rows, and the text model
        # frozen (Llama 3 sections 7, 8) unless train.vision_train is full; a text model trains
        # on shards.
        adapter_run = data is None and adapter
        if adapter_run and self.lora is not None:
            if t.vision_train == "full":
                raise HerdError(
                    "[lora] with train.vision_train full: LoRA keeps the text model frozen; use "
                    "vision_train adapter (the added parts train whole) or drop [lora]"
                )
            if run.model_config().video is not None:
                raise HerdError("[lora] with a video model is not supported yet; drop [lora]")
            # the added parts train whole beside the text model's adapters and are saved with them
            parts = added_parts(run.model_config())
            self.lora = dataclasses.replace(self.lora, modules_to_save=parts)
        if data is None:
            data = adapter_data(run, self.rank) if adapter else pretraining_data(run, self.rank)
        self.tokenizer, self.val_batches = data.tokenizer, data.val
        self.token_bytes = torch.as_tensor(self.tokenizer.token_bytes, dtype=torch.long)
        self.model_config = run.model_config(vocab_size=self.tokenizer.vocab_size)
        if self.tokenizer.vocab_size > self.model_config.vocab_size:
            raise HerdError(
                f"{d.path}: the tokenizer has {self.tokenizer.vocab_size} tokens, more than the "
                f"model's {self.model_config.vocab_size} embeddings"
            )
        if d.seq_len > self.model_config.max_seq_len:
            raise HerdError(
                f"data.seq_len {d.seq_len} does not fit the model's context "
                f"{self.model_config.max_seq_len} (set model.max_seq_len or lower data.seq_len)"
            )
        self.loader = StepLoader(
            data.source, t.grad_accum, self.rows, pin_memory=self.device.type == "cuda"
        )
        dtype = PARAM_DTYPES[t.param_dtype]
        self.model = build_model(self.model_config, self.device, dtype, t.seed).train()
        if run.init_checkpoint:
            load_start_weights(self.model, run.init_checkpoint)
        if adapter_run:
            from herd.checkpoint.convert import read_config

            freeze_for_adapter(self.model, t.vision_train, read_config(run.init_checkpoint))
        if self.lora is not None:  # frozen base, trainable adapters (B = 0: the base's outputs)
            # A's random start drawn from the run's seed, not from whatever the process drew first
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(t.seed)
                apply_lora(self.model, self.lora)
        self.objective = data.objective
        if self.objective is not None:  # e.g. DPO's reference log-probs, from the start weights
            with self._autocast():  # the precision the policy's log-probs will have
                self.objective.prepare(self.model, self.rank, self.device, fresh=not resume)
        self.loss_sum = nll_sum if self.objective is None else self.objective.loss_sum
        parallelize(self.model, t, self.device, self.world_size)
        self.optimizer = build_optimizer(self.model, run.optim)
        self.step, self.tokens = 0, 0
        self.log = RunLog(self.run_dir, enabled=self.rank == 0)
        self.stability = Stability(run.stability)
        self.spikes = SpikeDetector(run.stability, self.stability.drops_spikes, self.device)
        self.param_groups = layer_groups(self.model)
        self.flops_per_token = self.model_config.flops_per_token(d.seq_len)
        self.peak_flops = throughput.resolve_peak(self.device, t.peak_flops, self.rank == 0)
        self.verdicts = Verdicts(self.log, self.stability, self.rank)
        self._prepare_run_dir(resume)

    # --- run folder and resume -----------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool) -> None:
        ckpts = self.run_dir / "checkpoints"
        stale = []
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                for f in (self.log.metrics, self.log.events, self.run_dir / "stability.jsonl"):
                    f.unlink(missing_ok=True)
            stale = remove_stale_temporaries(ckpts)  # what a write killed half-way left
        distributed.barrier()
        path = self._restore() if resume else None  # a checkpoint that does not fit stops here
        if self.rank == 0:  # so the run folder keeps the config its checkpoints were made with
            (self.run_dir / "config.toml").write_text(dump_toml(self.run))
        if not resume:
            return
        # Lines past the restored step (all of them, with no checkpoint) are logged again.
        self.log.truncate(self.step)
        for folder in stale:
            self.log.event(self.step, "stale_checkpoint_removed", path=str(folder))
        self.log.event(self.step, "resume", checkpoint=None if path is None else str(path))

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
        check_same_model(path, ckpt["config"], self.model_config)
        tied = self.model_config.tie_embeddings
        if ckpt["format"] == "sharded":  # DCP reshards: any number of processes can load it
            distributed.load_sharded_state(self.model, self.optimizer, path / "train_state", tied)
        elif ckpt["format"] == "adapter":
            # The adapters alone, into every process's shards; the base stays [model]
            # checkpoint's, as loaded (under FSDP2 a gathered copy would be rank 0's only).
            weights = ckpt["model"]
            names = {peft: herd for herd, peft in self._adapter_names().items()}
            unknown = sorted(set(weights) - set(names))
            if unknown or len(weights) != len(names):
                raise HerdError(f"{path}: its adapters do not match [lora] ({unknown[:1]})")
            adapters = {names[k]: v for k, v in weights.items()}
            distributed.load_full_state(
                self.model, self.optimizer, adapters, ckpt["optimizer"], partial=True
            )
        else:
            weights = dict(ckpt["model"])
            if tied:
                weights["output.weight"] = weights["embed.weight"]
            distributed.load_full_state(self.model, self.optimizer, weights, ckpt["optimizer"])
        state = ckpt["state"]
        self.step, self.tokens = state["step"], state["tokens"]
        self.loader.load_state_dict(state["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        stability = state.get("stability", {})
        self.stability.load_state_dict(stability, self.optimizer, self.run.optim.eps)
        self.spikes.load_state_dict(stability)
        monitor = ckpt["monitor"] if self.rank == 0 else {}
        self.stability.load_gradient_snapshot(monitor, self.param_groups)
        self.verdicts.clear()
        self.verdicts.unapplied = int(stability.get("unapplied", 0))
        return path

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the state after `self.step` (the verdicts read first)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        stability = {
            **self.stability.state_dict(),
            **self.spikes.state_dict(),
            "unapplied": self.verdicts.unapplied,
        }
        state = {"tokens": self.tokens, "data": self.loader.state_dict(), "stability": stability}
        monitor = self.stability.gradient_snapshot() if self.rank == 0 else {}
        folder, files = self.run_dir / "checkpoints", self.tokenizer.files()
        keep = self.run.train.keep_checkpoints
        if self.checkpoint_format == "sharded":  # nothing gathered: each process writes its own
            path = save_sharded_checkpoint(
                folder,
                self.step,
                self.model_config,
                self.model,
                self.optimizer,
                state,
                rng,
                files,
                keep,
                self.device,
                monitor,
            )
        else:
            adapter = None
            if self.checkpoint_format == "adapter":  # PEFT's layout, its base named
                names = self._adapter_names()
                # the adapters alone are gathered: the frozen base is [model] checkpoint's
                weights = distributed.gather_tensors(self.model, list(names))
                optim = distributed.full_optimizer_state(self.model, self.optimizer)
                tensors = {peft: weights[herd].contiguous() for herd, peft in names.items()}
                adapter = (tensors, peft_config_dict(self.lora, self.run.init_checkpoint or None))
            else:
                weights, optim = distributed.full_state(self.model, self.optimizer)
            path = folder
            if self.rank == 0:
                path = save_training_checkpoint(
                    folder,
                    self.step,
                    self.model_config,
                    weights,
                    optim,
                    state,
                    rng,
                    files,
                    keep,
                    monitor,
                    adapter,
                )
            distributed.barrier()
        self.log.event(self.step, "checkpoint", path=str(path), format=self.checkpoint_format)
        return path

    def _adapter_names(self) -> dict[str, str]:
        """herd name -> PEFT key of every LoRA adapter tensor (the same in every process)."""
        return peft_names(distributed.state_names(self.model), self.lora.modules_to_save)

    # --- steps ---------------------------------------------------------------------------------

    def _autocast(self):
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def train_step(self) -> None:
        """One optimizer step over grad_accum micro-batches (no host sync unless the stability
        monitor or a host-side response needs this step's verdict)."""
        run = self.run
        set_lr(self.optimizer, self.step, run.train.steps, run.optim)
        factor = self.stability.lr_factor(self.step)
        if factor != 1.0:  # a lower_lr response in force
            for group in self.optimizer.param_groups:
                group["lr"] *= factor
        batch = self.loader.next()
        self.tokens += run.data.batch_size * run.data.seq_len * run.train.grad_accum
        loss, worst = accumulate_gradients(
            self.model, batch, self.device, self._autocast, self.loss_sum
        )
        norm = clip_gradients(self.model, run.optim.grad_clip)
        skip, row = self.spikes.observe(loss, worst, norm)
        self.verdicts.add(self.step + 1, row)
        monitored = self.stability.monitor_step(self.step)
        skipped = False  # as far as the host knows
        if monitored or self.stability.acts_from_host:
            if self._read_verdicts():  # rewound: this step is undone too
                self.optimizer.zero_grad(set_to_none=True)
                return
            skipped = self.verdicts.last["skipped"]
        monitored = monitored and not skipped
        if monitored:
            self.stability.keep_weights(self.param_groups)
        guarded_update(self.optimizer, skip)
        if monitored:
            self._record_monitor()
        if self.stability.snapshot_step(self.step) and not skipped:
            # (dropped when its verdict, read later, says it was skipped)
            self.stability.keep_gradients(self.param_groups)
        self.optimizer.zero_grad(set_to_none=True)
        for action in self.verdicts.responses:
            if action == "lower_lr":
                self.stability.lower_lr(self.step)
            elif action == "eps":
                self.stability.raise_eps(self.optimizer, run.optim.eps)
        self.verdicts.responses.clear()
        self.step += 1

    def _record_monitor(self) -> None:
        last = self.verdicts.last
        record = self.stability.measure(
            self.step,
            self.param_groups,
            self.optimizer,
            last["loss"],
            last["max_loss"],
            last["grad_norm"],
        )
        self.log.stability(record)
        layers = self.stability.warnings(record, last["window_full"])
        if layers:
            self.log.event(self.step + 1, "instability_warning", layers=layers)

    def _read_verdicts(self) -> bool:
        """Read the pending verdicts and carry out the rewinds they call for; True when the run
        was rewound (to an earlier step)."""
        while (spike := self.verdicts.read()) is not None:
            if self._rewind(spike):
                return True
        return False

    def _rewind(self, spike_step: int) -> bool:
        """Restore the newest checkpoint from before the spike and skip the batches after it;
        False when there is none (the spike's update stays skipped, training goes on)."""
        rewinds = self.stability.rewinds + 1  # counted across restores, not restored
        path = self._restore(before=spike_step)
        if path is None:
            self.log.event(spike_step, "rewind_failed", reason="no checkpoint before the spike")
            return False
        self.stability.rewinds = rewinds
        cursor = self.loader.state_dict()
        # The run from the checkpoint is deterministic: skipping the same batches again would
        # replay the same spike, so the k-th rewind skips k times as many.
        skipped = self.run.stability.skip_batches * self.run.train.grad_accum * rewinds
        self.loader.skip(skipped)
        self.log.event(
            spike_step,
            "rewind",
            checkpoint=str(path),
            to_step=self.step,
            skipped_batches=skipped,
            cursor_from=cursor,
            cursor_to=self.loader.state_dict(),
        )
        return True

    def evaluate(self) -> dict | None:
        """Validation loss and bits per byte on the held-out batches (None without any); with
        an objective of its own (DPO), what its `validate` reports."""
        if self.objective is not None and hasattr(self.objective, "validate"):
            cfg = self.run.train
            args = (self.model, cfg.eval_batches, self.rows, self.device, self._autocast)
            return self.objective.validate(*args) or None
        if self.val_batches is None:
            return None
        return validate(
            self.model,
            self.val_batches(self.run.train.eval_batches, self.rows),
            device=self.device,
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
                self.train_step()
                final = self.step == cfg.steps
                due = {
                    "log": self.step % cfg.log_every == 0 or final,
                    "eval": self.step % cfg.eval_every == 0 or final,
                    "checkpoint": self.step % cfg.checkpoint_every == 0 or final,
                }
                if self.step > before and any(due.values()):
                    self._read_verdicts()  # before anything is logged or saved
                if self.step <= before:  # rewound to an earlier checkpoint: nothing to log or save
                    bar.n = self.step
                    bar.refresh()
                    clock, tokens_at = time.perf_counter(), self.tokens
                    continue
                bar.update(1)
                if due["log"]:
                    now = time.perf_counter()
                    rate = (self.tokens - tokens_at) / max(now - clock, 1e-9)
                    clock, tokens_at = now, self.tokens
                    per_device = rate / self.world_size
                    last = {
                        "step": self.step,
                        "tokens": self.tokens,
                        "loss": self.verdicts.last["loss"],
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": self.verdicts.last["grad_norm"],
                        "tokens_per_s": rate,
                        "mfu": throughput.mfu(per_device, self.flops_per_token, self.peak_flops),
                        "memory_gib": self._memory(),
                    }
                    if self.objective is not None:
                        last.update(self.objective.read_metrics())
                    self.log.metric(last)
                    bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{rate:,.0f}")
                if due["eval"]:
                    val = self.evaluate()
                    if val is not None:
                        self.log.metric({"step": self.step, "tokens": self.tokens, **val})
                        last.update(val)
                if due["checkpoint"]:
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
