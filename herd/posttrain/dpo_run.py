"""`herd dpo CONFIG.toml`: direct preference optimisation of a checkpoint on preference pairs.

Llama 3 section 4.1.4: after SFT, DPO with beta 0.1 and an NLL term on the chosen response
(alpha 0.2), header and termination tokens masked out of both responses, learning rate 1e-5. The
loss, its metrics and the reference log-probabilities are herd/posttrain/dpo.py (checked against
TRL's DPOTrainer); this module runs them on the pretraining engine (herd/train/trainer.py): the
same run folder, checkpoints, resume, FSDP2, stability monitor and plots.

The reference model is the starting checkpoint. Its log-probabilities of every pair are computed
once, before the first step, into `reference_logps.safetensors` in the run folder (resumable:
an interrupted computation continues where it stopped) and read at every step of every epoch, so
no second copy of the weights is kept.

A step's loss is the mean over its pairs (all micro-batches and processes, as the loader counts
pairs) of the DPO term plus alpha times the chosen responses' mean NLL per token of its
micro-batch (TRL's `sft` term, which TRL also takes per device batch). Metrics, logged as TRL names
them (`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`,
`logps/chosen`, `logps/rejected`), are means over the pairs since the previous log line (this
process's pairs). Validation on held-out pairs is not implemented yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.posttrain.dpo import BETA, NLL_WEIGHT, PreferenceBatch, dpo_loss, preference_logps
from herd.posttrain.dpo import reference_logps as compute_reference_logps
from herd.posttrain.preference_batches import PairBatch, PreferenceBatches
from herd.train.config import RunConfig, load_run_config
from herd.train.training_data import TrainingData

DPO_DEFAULTS = {"optim.lr": "1e-5", "optim.warmup_steps": "10"}
REFERENCE_FILE = "reference_logps.safetensors"


class DPOObjective:
    """The DPO loss of PairBatches against reference log-probs computed once (`prepare`)."""

    def __init__(self, batches: PreferenceBatches, beta: float, alpha: float, path: Path) -> None:
        self.batches, self.beta, self.alpha, self.path = batches, beta, alpha, Path(path)
        self.reference: torch.Tensor | None = None  # [pairs, 2] (chosen, rejected)
        self._metrics: list[tuple[int, dict[str, torch.Tensor]]] = []

    def prepare(self, model: torch.nn.Module, rank: int, device: torch.device) -> None:
        """The reference log-probs of every pair under `model` as it is now (the start)."""
        if rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        table = compute_reference_logps(
            model,
            (PreferenceBatch(*b.to(device).tensors()[:4]) for b in self.batches.in_order()),
            path=self.path if rank == 0 else None,  # one writer; every process computes its own
            pad_id=self.batches.pad_id,
        )
        if table.shape[0] != len(self.batches.examples):
            raise HerdError(
                f"{self.path}: {table.shape[0]} reference rows for "
                f"{len(self.batches.examples)} pairs (remove the file to recompute)"
            )
        self.reference = table.to(device)

    def loss_sum(self, model, micro: PairBatch) -> torch.Tensor:
        """The micro-batch's loss summed over its pairs (the step divides by all its pairs)."""
        sides = PreferenceBatch(*micro.tensors()[:4])
        policy = preference_logps(model, sides, self.batches.pad_id)
        reference = self.reference[micro.index]
        nll = policy.chosen_nll() if self.alpha else None
        loss, metrics = dpo_loss(
            policy.chosen, policy.rejected, reference[:, 0], reference[:, 1],
            self.beta, self.alpha, nll,
        )  # fmt: skip
        pairs = micro.index.numel()
        self._metrics.append((pairs, metrics))
        return loss * pairs

    def read_metrics(self) -> dict[str, float]:
        """TRL's metrics, means over the pairs since the last read (one host read)."""
        if not self._metrics:
            return {}
        names = list(self._metrics[0][1])
        weights = torch.tensor([n for n, _ in self._metrics], dtype=torch.float64)
        values = torch.stack(
            [torch.stack([m[k].double() for k in names]) for _, m in self._metrics]
        ).cpu()
        self._metrics.clear()
        means = (values * weights[:, None]).sum(0) / weights.sum()
        return dict(zip(names, means.tolist(), strict=True))


def dpo_data(run: RunConfig, run_dir: Path, rank: int = 0) -> TrainingData:
    """The checkpoint's tokenizer, the preference pairs of [data] path, and the DPO objective."""
    from herd.posttrain.chat_data import load_dpo
    from herd.posttrain.sft import start_tokenizer

    tokenizer = start_tokenizer(run, "DPO")
    d = run.data
    data = load_dpo(tokenizer, d.path, d.seq_len, strict=d.strict)
    if rank == 0:
        for problem in data.problems[:5]:
            print(f"skipped {problem}", file=sys.stderr)
        c = data.counts
        print(
            f"dpo data: {c['kept']} of {c['rows']} pairs kept ({c['malformed']} malformed, "
            f"{c['too_long']} longer than seq_len {d.seq_len} and dropped)",
            file=sys.stderr,
        )
    if not data.examples:
        raise HerdError(f"{d.path}: no usable preference pair")
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    batches = PreferenceBatches(data.examples, d.batch_size, d.seed, pad_id=pad)
    objective = DPOObjective(batches, run.dpo.beta, run.dpo.alpha, Path(run_dir) / REFERENCE_FILE)
    return TrainingData(tokenizer, batches, None, objective)


def run_dpo(args: argparse.Namespace) -> None:
    """`herd dpo CONFIG.toml [--SECTION.FIELD VALUE ...]` or `herd dpo --resume RUN_DIR`."""
    from herd.posttrain.sft import load_stage_config
    from herd.train import distributed
    from herd.train.commands import fit_and_report

    overrides = getattr(args, "overrides", {})
    if args.resume:
        run_dir = Path(args.resume)
        config = args.config or run_dir / "config.toml"
        if not Path(config).is_file():
            raise HerdError(f"{run_dir}: no config.toml to resume from")
        run = load_run_config(str(config), overrides)
    else:
        if args.config is None and not overrides:
            raise HerdError("give a CONFIG.toml or --SECTION.FIELD overrides")
        run = load_stage_config(args.config, overrides, DPO_DEFAULTS)
        run_dir = Path(run.train.out)
    rank, _ = distributed.world()
    fit_and_report(run, run_dir, bool(args.resume), dpo_data(run, run_dir, rank))


__all__ = ["BETA", "NLL_WEIGHT", "DPOObjective", "dpo_data", "run_dpo"]
