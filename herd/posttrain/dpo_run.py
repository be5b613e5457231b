"""`herd dpo CONFIG.toml`: direct preference optimisation of a checkpoint on preference pairs.

Llama 3 section 4.1.4: after SFT, DPO with beta 0.1 and an NLL term on the chosen response
(alpha 0.2), header and termination tokens masked out of both responses, learning rate 1e-5. The
loss, its metrics and the reference log-probabilities are herd/posttrain/dpo.py (checked against
TRL's DPOTrainer); this module runs them on the pretraining engine (herd/train/trainer.py): the
same run folder, checkpoints, resume, FSDP2, stability monitor and plots.

The reference model is the starting checkpoint. Its log-probabilities of every pair are computed
once, before the first step, and read at every step of every epoch, so no second copy of the
weights is kept. The tables live beside the data, in `PATH.herd-reference/` for a local
`data.path` (a file or a folder), one `reference_logps-FINGERPRINT.safetensors` per pair set
(training, held out) and reference: every run from the same start on the same pairs, an alpha or
learning-rate sweep, reads the table the first one computed. The fingerprint covers whatever
changes the numbers (`reference_fingerprint`); a table stored for another is recomputed, never
read. A Hugging Face dataset name, or a data folder that cannot be written, keeps them in the run
folder. An interrupted computation resumes from the pairs stored. The run folder's
`reference.json` names the tables the run used (`reference_files(run_dir)`).

A step's loss is the mean over its pairs (all micro-batches and processes, as the loader counts
pairs) of the DPO term plus alpha times the chosen responses' mean NLL per token of its
micro-batch (TRL's `sft` term, which TRL also takes per device batch). Metrics, logged as TRL names
them (`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`,
`logps/chosen`, `logps/rejected`), are means over the pairs since the previous log line (this
process's pairs). A share of the pairs (`data.val_fraction`, by a hash of their tokens) is held out:
validation reports their DPO loss (`val_loss`), `val_rewards/accuracies` and `val_rewards/margins`
against their own reference log-probabilities (the `val` table of `reference_files`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.posttrain.dpo import (
    BETA,
    NLL_WEIGHT,
    PreferenceBatch,
    dpo_loss,
    preference_logps,
)
from herd.posttrain.preference_batches import PairBatch, PreferenceBatches, pair_weighted_means
from herd.posttrain.reference_tables import (
    record_tables,
    reference_fingerprint,
    reference_folder,
    reference_pass,
    start_stamp,
)
from herd.train.config import RunConfig
from herd.train.training_data import TrainingData

DPO_DEFAULTS = {"optim.lr": "1e-5", "optim.warmup_steps": "10"}
# --- the objective -----------------------------------------------------------------------------


class DPOObjective:
    """The DPO loss of PairBatches against reference log-probs computed once (`prepare`)."""

    def __init__(
        self,
        batches: PreferenceBatches,
        held_out: PreferenceBatches | None,
        beta: float,
        alpha: float,
        folder: Path,
        run_dir: Path,
        start: str | Path,
        seq_len: int,
    ) -> None:
        self.batches, self.held_out, self.beta, self.alpha = batches, held_out, beta, alpha
        self.folder, self.run_dir, self.start = Path(folder), Path(run_dir), start
        self.seq_len = seq_len
        self.reference: torch.Tensor | None = None  # [pairs, 2] (chosen, rejected)
        self.held_out_reference: torch.Tensor | None = None
        self._metrics: list[tuple[int, dict[str, torch.Tensor]]] = []

    def prepare(
        self, model: torch.nn.Module, rank: int, device: torch.device, fresh: bool = True
    ) -> None:
        """The reference log-probs of every pair under `model` as it is now (the start), read
        from the table of their fingerprint or computed into it; fresh and resumed runs alike
        (a table left by other data or another start has another fingerprint). Every process
        computes what is missing (rank 0 alone writes) and records the tables in the run folder's
        reference.json."""
        start = start_stamp(self.start)
        tables = {}
        was_training = model.training
        # Eval mode: no LoRA dropout, whose output B = 0 zeroes anyway, and so no random numbers
        # drawn; a run that reads a table trains exactly as the one that computed it.
        model.eval()
        try:
            self.reference, tables["train"] = self._table(
                model, "train", self.batches, start, rank, device
            )
            if self.held_out is not None:
                self.held_out_reference, tables["val"] = self._table(
                    model, "val", self.held_out, start, rank, device
                )
        finally:
            model.train(was_training)
        if rank == 0:
            record_tables(self.run_dir, self.folder, tables, fresh)

    def _table(
        self, model, name: str, pairs: PreferenceBatches, start: dict, rank: int, device
    ) -> tuple[torch.Tensor, dict]:
        """One pair set's table on `device`, read, resumed or computed, and its record. Every
        process computes what is missing; rank 0 alone writes, by atomic renames, so a process
        reading at any time finds a whole table (perhaps with more rows than when it began: the
        same numbers)."""

        def log(line: str) -> None:
            if rank == 0:
                print(f"dpo reference ({name}): {line}", file=sys.stderr)

        began = time.perf_counter()
        fingerprint = reference_fingerprint(start, pairs, model, device)
        path = self.folder / f"reference_logps-{fingerprint['fingerprint'][:16]}.safetensors"
        size = self.batches.batch_size  # the held-out pairs' windows and forwards too
        table = reference_pass(
            model, pairs, size, self.seq_len, device, path, fingerprint, rank == 0, log
        )
        if table.shape[0] != len(pairs.examples):
            raise HerdError(
                f"{path}: {table.shape[0]} reference rows for {len(pairs.examples)} pairs "
                "(remove the file to recompute)"
            )
        log(f"{table.shape[0]} pairs ready in {time.perf_counter() - began:.1f} s")
        record = {"path": str(path), "fingerprint": fingerprint["fingerprint"], "pairs": len(table)}
        return table.to(device), record

    def _loss(self, model, micro: PairBatch, reference: torch.Tensor):
        sides = PreferenceBatch(*micro.tensors()[:4])
        policy = preference_logps(model, sides, self.batches.pad_id)
        ref = reference[micro.index]
        nll = policy.chosen_nll() if self.alpha else None
        return dpo_loss(
            policy.chosen, policy.rejected, ref[:, 0], ref[:, 1], self.beta, self.alpha, nll
        )

    def loss_sum(self, model, micro: PairBatch) -> torch.Tensor:
        """The micro-batch's loss summed over its pairs (the step divides by all its pairs)."""
        loss, metrics = self._loss(model, micro, self.reference)
        pairs = micro.index.numel()
        self._metrics.append((pairs, metrics))
        return loss * pairs

    @torch.no_grad()
    def validate(self, model, max_batches: int | None, rows: slice, device, autocast) -> dict:
        """DPO loss, reward accuracy and margin over held-out pairs (summed over processes)."""
        from herd.train import distributed

        if self.held_out is None:
            return {}
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        for b, batch in enumerate(self.held_out.in_order(self.batches.batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            micro = batch.map(lambda t: t[rows]).to(device)  # this process's rows
            n = float(micro.index.numel())
            if n == 0:
                # None here (a short last batch), but under FSDP2 a forward is a collective that
                # every process must join: run one on a row and count nothing of it.
                micro = batch.map(lambda t: t[:1]).to(device)
            with autocast():
                loss, metrics = self._loss(model, micro, self.held_out_reference)
            sums += n * torch.stack(
                [
                    torch.ones((), dtype=torch.float64, device=device),
                    loss.double(),
                    metrics["rewards/accuracies"].double(),
                    metrics["rewards/margins"].double(),
                ]
            )
        model.train(was_training)
        pairs, loss, accuracy, margin = distributed.all_reduce_sum(sums.tolist(), device)
        if pairs == 0:
            return {}
        return {
            "val_loss": loss / pairs,
            "val_rewards/accuracies": accuracy / pairs,
            "val_rewards/margins": margin / pairs,
        }

    def read_metrics(self) -> dict[str, float]:
        """TRL's metrics, means over the pairs since the last read (one host read)."""
        means = pair_weighted_means(self._metrics)
        self._metrics.clear()
        return means


def dpo_data(run: RunConfig, run_dir: Path, rank: int = 0) -> TrainingData:
    """The checkpoint's tokenizer, the preference pairs of [data] path, and the DPO objective."""
    from herd.data.chat_data import load_dpo
    from herd.posttrain.sft import split_held_out, start_tokenizer

    tokenizer = start_tokenizer(run, "DPO")
    d = run.data
    data = load_dpo(tokenizer, d.path, d.seq_len, strict=d.strict, split=d.split)
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
    train, held_out = split_held_out(
        data.examples, d.val_fraction, key=lambda e: (e.prompt_ids, e.chosen_ids, e.rejected_ids)
    )
    batches = PreferenceBatches(train, d.batch_size, d.seed, pad_id=pad)
    # read in order only (validate, the reference): any number of held-out pairs will do
    val = PreferenceBatches(held_out, 1, d.seed, pad_id=pad) if held_out else None
    folder, why = reference_folder(d.path, run_dir)
    if rank == 0:
        print(
            f"dpo data: {len(train)} pairs to train on, {len(held_out)} held out "
            f"(data.val_fraction {d.val_fraction})",
            file=sys.stderr,
        )
        print(f"dpo reference: tables in {folder} ({why})", file=sys.stderr)
    objective = DPOObjective(
        batches, val, run.dpo.beta, run.dpo.alpha, folder, run_dir, run.init_checkpoint, d.seq_len
    )
    return TrainingData(tokenizer, batches, None, objective)


def run_dpo(args: argparse.Namespace) -> None:
    """`herd dpo CONFIG.toml [--SECTION.FIELD VALUE ...]` or `herd dpo --resume RUN_DIR`."""
    from herd.posttrain.sft import load_stage_config
    from herd.train import distributed
    from herd.train.commands import fit_and_report, run_from_args

    run, run_dir, resume = run_from_args(
        args, lambda path, overrides: load_stage_config(path, overrides, DPO_DEFAULTS)
    )
    rank, _ = distributed.world()
    fit_and_report(run, run_dir, resume, dpo_data(run, run_dir, rank))


__all__ = ["BETA", "NLL_WEIGHT", "DPOObjective", "dpo_data", "run_dpo"]
