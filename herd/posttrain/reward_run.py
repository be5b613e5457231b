"""`herd rm CONFIG.toml`: train a reward model on preference pairs (Llama 2 section 3.2.2).

The model is the [model] checkpoint (a chat / SFT model) with its output layer replaced by a
scalar head (`model.head = "score"`, initialised N(0, 0.02) like every projection; a checkpoint
that is already a reward model keeps its head), trained with the binary ranking loss and the
margin table of `rm.margin` (herd/posttrain/reward.py). It runs on the pretraining engine
(herd/train/trainer.py), as `herd dpo` does: the same run folder, checkpoints, resume, FSDP2,
metrics.jsonl and plots. Every checkpoint is a herd folder whose config.json says `"head":
"score"`; `herd convert --to hf` writes it as a LlamaForSequenceClassification.

Defaults that differ from `herd train` follow the paper: one epoch (`train.steps = 0` means
`rm.epochs` passes over the training pairs, resolved into the run folder's config.toml), learning
rate 1e-5 with cosine decay to 10% (optim.min_lr_ratio) and a warm-up of 3% of the steps
(`optim.warmup_steps = -1` means `rm.warmup_fraction` of them).

Metrics (named as DPO's, so plots/rewards.png draws them): loss, rewards/chosen, rewards/rejected
(mean scores), rewards/margins (mean r_c − r_r) and rewards/accuracies (share with r_c > r_r),
means over the pairs since the last log line. A share of the pairs (`data.val_fraction`, by a hash
of their tokens) is held out: validation reports val_loss, val_rewards/accuracies,
val_rewards/margins, and val_rewards/accuracies/LEVEL with val_pairs/LEVEL for each rating level
present (significantly_better, better, slightly_better, negligibly_better, unrated).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from herd.errors import HerdError
from herd.posttrain.preference_batches import PairBatch, PreferenceBatches, pair_weighted_means
from herd.posttrain.reward import (
    LEVELS,
    check_margin_table,
    level_key,
    ranking_loss,
    reward_pad_id,
    sequence_scores,
)
from herd.train.config import RunConfig
from herd.train.training_data import TrainingData

RM_DEFAULTS = {
    "optim.lr": "1e-5",
    "optim.warmup_steps": "-1",  # rm.warmup_fraction of the steps
    "train.steps": "0",  # rm.epochs over the pairs
    "model.head": "score",
    "model.tie_embeddings": "false",  # the [1, dim] score head is its own matrix
}
# rating levels 0-3, then pairs without a rating
_LEVEL_SLOTS = [*range(len(LEVELS)), None]


def _pair_table(examples) -> torch.Tensor:
    """[pairs, 4] float64: chosen length, rejected length, margin, level (-1: unrated)."""
    rows = [[*e.lengths(), e.margin, -1 if e.level is None else e.level] for e in examples]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def pair_scores(model, micro: PairBatch, lengths: torch.Tensor, pad_id: int):
    """(chosen, rejected) scores [B] of a micro-batch from one forward: both sides right-padded
    to one width and stacked along the batch."""
    B = micro.chosen_ids.shape[0]
    T = max(micro.chosen_ids.shape[1], micro.rejected_ids.shape[1])
    pad = torch.nn.functional.pad
    ids = torch.cat(
        [
            pad(micro.chosen_ids, (0, T - micro.chosen_ids.shape[1]), value=pad_id),
            pad(micro.rejected_ids, (0, T - micro.rejected_ids.shape[1]), value=pad_id),
        ]
    )
    scores = sequence_scores(model, ids, torch.cat([lengths[:, 0], lengths[:, 1]]))
    return scores[:B], scores[B:]


class RewardObjective:
    """The ranking loss of PairBatches, with each pair's margin and rating level looked up."""

    def __init__(self, batches: PreferenceBatches, held_out: PreferenceBatches | None) -> None:
        self.batches, self.held_out = batches, held_out
        self.tables: dict[str, torch.Tensor] = {}
        self._metrics: list[tuple[int, dict[str, torch.Tensor]]] = []

    def prepare(self, model, rank: int, device: torch.device, fresh: bool = True) -> None:
        """Each pair's lengths, margin and level on the device (no reference model to run)."""
        self.tables["train"] = _pair_table(self.batches.examples).to(device)
        if self.held_out is not None:
            self.tables["val"] = _pair_table(self.held_out.examples).to(device)

    def _loss(self, model, micro: PairBatch, table: torch.Tensor):
        rows = table[micro.index]
        chosen, rejected = pair_scores(model, micro, rows[:, :2].long(), self.batches.pad_id)
        loss, metrics = ranking_loss(chosen, rejected, rows[:, 2])
        return loss, metrics, chosen.detach() - rejected.detach(), rows[:, 3]

    def loss_sum(self, model, micro: PairBatch) -> torch.Tensor:
        """The micro-batch's loss summed over its pairs (the step divides by all its pairs)."""
        loss, metrics, _, _ = self._loss(model, micro, self.tables["train"])
        pairs = micro.index.numel()
        self._metrics.append((pairs, metrics))
        return loss * pairs

    @torch.no_grad()
    def validate(self, model, max_batches: int | None, rows: slice, device, autocast) -> dict:
        """Ranking loss, accuracy and mean score margin over held-out pairs, and the accuracy at
        each rating level (summed over processes)."""
        from herd.train import distributed

        if self.held_out is None:
            return {}
        was_training = model.training
        model.eval()
        # pairs, loss, correct, margin, then (pairs, correct) per level slot
        sums = torch.zeros(4 + 2 * len(_LEVEL_SLOTS), dtype=torch.float64, device=device)
        for b, batch in enumerate(self.held_out.in_order(self.batches.batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            micro = batch.map(lambda t: t[rows]).to(device)  # this process's rows
            counted = micro.index.numel() > 0
            if not counted:  # an FSDP2 forward is a collective: join it, count nothing
                micro = batch.map(lambda t: t[:1]).to(device)
            with autocast():
                loss, _, difference, levels = self._loss(model, micro, self.tables["val"])
            if not counted:
                continue
            correct = (difference > 0).double()
            n = torch.ones_like(correct).sum()
            part = [n, loss.double() * n, correct.sum(), difference.double().sum()]
            for slot in _LEVEL_SLOTS:
                at = (levels == (-1 if slot is None else slot)).double()
                part += [at.sum(), (correct * at).sum()]
            sums += torch.stack(part)  # on the device: no host read until the all-reduce
        model.train(was_training)
        totals = distributed.all_reduce_sum(sums.tolist(), device)
        pairs = totals[0]
        if pairs == 0:
            return {}
        out = {
            "val_loss": totals[1] / pairs,
            "val_rewards/accuracies": totals[2] / pairs,
            "val_rewards/margins": totals[3] / pairs,
        }
        for i, slot in enumerate(_LEVEL_SLOTS):
            n, correct = totals[4 + 2 * i], totals[5 + 2 * i]
            if n:
                out[f"val_rewards/accuracies/{level_key(slot)}"] = correct / n
                out[f"val_pairs/{level_key(slot)}"] = int(n)
        return out

    def read_metrics(self) -> dict[str, float]:
        """The batch metrics, means over the pairs since the last read (one host read)."""
        means = pair_weighted_means(self._metrics)
        self._metrics.clear()
        return means


def resolve_schedule(run: RunConfig, train_pairs: int) -> None:
    """train.steps 0 -> rm.epochs over the training pairs; optim.warmup_steps -1 ->
    rm.warmup_fraction of the steps (written into the run folder's config.toml as numbers)."""
    per_step = run.data.batch_size * run.train.grad_accum
    if run.train.steps == 0:
        if not run.rm.epochs > 0:
            raise HerdError(f"rm.epochs {run.rm.epochs}: expected a positive number")
        run.train.steps = max(1, math.ceil(run.rm.epochs * train_pairs / per_step))
    if run.train.steps < 0:
        raise HerdError(f"train.steps {run.train.steps}: expected 0 (rm.epochs) or more")
    if run.optim.warmup_steps == -1:
        if not 0 <= run.rm.warmup_fraction < 1:
            raise HerdError(f"rm.warmup_fraction {run.rm.warmup_fraction}: expected [0, 1)")
        run.optim.warmup_steps = round(run.rm.warmup_fraction * run.train.steps)
    if run.optim.warmup_steps < 0:
        raise HerdError(f"optim.warmup_steps {run.optim.warmup_steps}: expected -1 or more")


def rm_data(run: RunConfig, rank: int = 0) -> TrainingData:
    """The checkpoint's tokenizer, the preference pairs of [data] path, and the ranking loss."""
    from herd.posttrain.reward_data import load_reward_pairs
    from herd.posttrain.sft import split_held_out, start_tokenizer

    if run.model.get("head") != "score":
        raise HerdError(f"model.head '{run.model.get('head')}': herd rm trains head 'score'")
    if run.lora.r:
        raise HerdError("lora.r > 0: herd rm trains every weight (LoRA has no score head here)")
    check_margin_table(run.rm.margin)
    tokenizer = start_tokenizer(run, "the reward model")
    d = run.data
    data = load_reward_pairs(
        tokenizer, d.path, d.seq_len, run.rm.margin, strict=d.strict, split=d.split
    )
    if rank == 0:
        for problem in data.problems[:5]:
            print(f"skipped {problem}", file=sys.stderr)
        c = data.counts
        print(
            f"rm data: {c['kept']} of {c['rows']} pairs kept ({c['malformed']} malformed, "
            f"{c['too_long']} longer than seq_len {d.seq_len} and dropped)",
            file=sys.stderr,
        )
    if not data.examples:
        raise HerdError(f"{d.path}: no usable preference pair")
    pad = reward_pad_id(tokenizer)
    train, held_out = split_held_out(
        data.examples, d.val_fraction, key=lambda e: (e.prompt_ids, e.chosen_ids, e.rejected_ids)
    )
    batches = PreferenceBatches(train, d.batch_size, d.seed, pad_id=pad)
    val = PreferenceBatches(held_out, 1, d.seed, pad_id=pad) if held_out else None
    resolve_schedule(run, len(train))
    if rank == 0:
        print(
            f"rm data: {len(train)} pairs to train on, {len(held_out)} held out "
            f"(data.val_fraction {d.val_fraction}); {run.train.steps} steps, "
            f"{run.optim.warmup_steps} of warm-up, margins '{run.rm.margin}'",
            file=sys.stderr,
        )
    return TrainingData(tokenizer, batches, None, RewardObjective(batches, val))


def run_rm_train(args: argparse.Namespace) -> None:
    """`herd rm CONFIG.toml [--SECTION.FIELD VALUE ...]` or `herd rm --resume RUN_DIR`."""
    from herd.posttrain.sft import load_stage_config
    from herd.train import distributed
    from herd.train.commands import fit_and_report, run_from_args

    run, run_dir, resume = run_from_args(
        args, lambda path, overrides: load_stage_config(path, overrides, RM_DEFAULTS)
    )
    rank, _ = distributed.world()
    fit_and_report(run, run_dir, resume, rm_data(run, rank))


__all__ = ["RM_DEFAULTS", "RewardObjective", "pair_scores", "resolve_schedule", "rm_data"]
