"""Direct preference optimisation: response log-probabilities, the loss, and reference log-probs.

DPO (Rafailov et al., 2023) trains the policy π directly on preference pairs (prompt, chosen y_c,
rejected y_r) against a frozen reference π_ref. Llama 3 (§4.1.4) adds a scaled NLL term on the
chosen response, which stabilises training and keeps the chosen responses' formatting:

    L = −log σ(β[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]) + α · NLL(y_c)

with β = 0.1 and α = 0.2, log π(y) summed over the response's content tokens only: header and
termination tokens are masked out of both responses (mask value 1 marks the content; the data
side's masks, herd/data/chat_data.py), as Llama 3 masks them because they are shared by both
sides and would be pushed up and down at once. The first term is averaged over the pairs of a
batch. NLL(y_c) is TRL's `sft` loss term (trl 1.16, `loss_type=["sigmoid", "sft"]`,
`loss_weights=[1.0, 0.2]`): the mean negative log-likelihood per chosen-response token over the
whole batch, Σ_pairs Σ_tokens −log π / Σ_pairs #tokens (a token mean, not a mean of per-sequence
means), over the content tokens and the chosen response's own end-of-turn token (mask value 2):
the NLL term has no rejected side to conflict with, and without the terminator nothing in DPO
holds the turn's end, so the policy learns to run on past it (measured: docs/post_training.md).
tests/parity/test_dpo_trl.py checks the DPO term and its metrics against TRL with the
terminators masked, and the NLL term against TRL's `sft` term with them kept.

The reference log-probs do not change during training, so `reference_logps` computes them once
(no gradient) into a file beside the data that every epoch reads; with LoRA the reference is the
same model with its adapters disabled, given as a context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from herd.model.loss import IGNORE
from herd.model.masks import PackedAttention

BETA = 0.1  # Llama 3 §4.1.4
NLL_WEIGHT = 0.2  # α, Llama 3 §4.1.4


class PreferenceBatch(NamedTuple):
    """Token ids [B, T] of prompt + response and masks [B, T] (1 on the response tokens counted in
    log π, 2 on the chosen response's terminators, counted in the NLL term only, 0 elsewhere) for
    the chosen and the rejected side of B pairs; the two sides may differ in length."""

    chosen_ids: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_ids: torch.Tensor
    rejected_mask: torch.Tensor


class PairLogps(NamedTuple):
    """Summed response log-probs [B] (float32) and response token counts [B] of each side (mask
    value 1), and the chosen side's summed log-probs and counts with its terminators (mask > 0)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    chosen_with_end: torch.Tensor
    chosen_with_end_tokens: torch.Tensor

    def chosen_nll(self) -> torch.Tensor:
        """Mean NLL per chosen-response token, terminators included, over the batch (TRL's `sft`
        term over those tokens)."""
        return -self.chosen_with_end.sum() / self.chosen_with_end_tokens.sum().clamp(min=1)


def response_targets(
    input_ids: torch.Tensor, response_mask: torch.Tensor, doc_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token targets [B, T]: position t predicts token t+1, counted only where token t+1 is
    a response token (and, with `doc_ids`, in the same document as t); IGNORE elsewhere."""
    keep = response_mask[:, 1:].bool()
    if doc_ids is not None:
        keep = keep & (doc_ids[:, 1:] == doc_ids[:, :-1])
    targets = torch.full_like(input_ids, IGNORE)
    targets[:, :-1] = torch.where(keep, input_ids[:, 1:], IGNORE)
    return targets


def _document_index(doc_ids: torch.Tensor) -> torch.Tensor:
    """Index of every token's document within its row, 0, 1, ... (doc_ids non-decreasing)."""
    starts = torch.zeros_like(doc_ids)
    starts[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).long()
    return starts.cumsum(dim=1)


def sequence_logps(
    model: Callable[..., torch.Tensor],
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the response tokens, and their counts, per sequence.

    input_ids, response_mask [B, T] (mask 1 on the response tokens to score). The model's fused
    output-projection loss gives the per-token NLL (`targets`, `reduction="none"`), so no [B, T,
    vocab] logits are built. Returns (logps, tokens), float32 and long, [B] for one sequence per
    row; with `doc_ids` [B, T] (packed rows: attention stays within documents) [B, D], one entry
    per document of each row in order (D: the most documents in any row; zeros past a row's end).
    """
    targets = response_targets(input_ids, response_mask, doc_ids)
    packed = PackedAttention.of(doc_ids)
    nll = model(input_ids, packed=packed, targets=targets, reduction="none")
    counted = targets != IGNORE
    logps = -nll.float()
    if doc_ids is None:
        return logps.sum(dim=1), counted.sum(dim=1)
    index = _document_index(doc_ids)
    shape = (input_ids.shape[0], int(index.max()) + 1)
    sums = logps.new_zeros(shape).scatter_add(1, index, logps)
    counts = torch.zeros(shape, dtype=torch.long, device=index.device)
    return sums, counts.scatter_add(1, index, counted.long())


def _right_pad(x: torch.Tensor, length: int, value: int = 0) -> torch.Tensor:
    return F.pad(x, (0, length - x.shape[1]), value=value)


def preference_logps(
    model: Callable[..., torch.Tensor], batch: PreferenceBatch, pad_id: int = 0
) -> PairLogps:
    """Chosen and rejected response log-probs from one forward: both sides right-padded to one
    length and concatenated along the batch ([chosen; rejected]). Right padding changes nothing
    before it under causal attention, and padded positions are masked out of the sums."""
    B = batch.chosen_ids.shape[0]
    T = max(batch.chosen_ids.shape[1], batch.rejected_ids.shape[1])
    ids = torch.cat(
        [_right_pad(batch.chosen_ids, T, pad_id), _right_pad(batch.rejected_ids, T, pad_id)]
    )
    mask = torch.cat([_right_pad(batch.chosen_mask, T), _right_pad(batch.rejected_mask, T)])
    targets = response_targets(ids, mask)
    logps = -model(ids, targets=targets, reduction="none").float()
    # position t predicts token t+1: its weight is token t+1's mask value
    scored = F.pad(mask[:, 1:], (0, 1))
    content = scored == 1
    sums, counts = (logps * content).sum(dim=1), content.sum(dim=1)
    chosen_any = scored[:B] > 0
    return PairLogps(
        sums[:B],
        sums[B:],
        counts[:B],
        counts[B:],
        (logps[:B] * chosen_any).sum(dim=1),
        chosen_any.sum(dim=1),
    )


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = BETA,
    alpha: float = NLL_WEIGHT,
    chosen_nll: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss (mean over pairs) + alpha · chosen_nll, and TRL's metrics for the batch.

    policy_* and ref_* [B]: summed response log-probs (`preference_logps`; the reference ones
    without gradient, e.g. read from `reference_logps`' file). chosen_nll: the mean NLL per
    chosen-response token (`PairLogps.chosen_nll()`); required when alpha != 0. Metrics, named
    as TRL's DPOTrainer logs them, are detached 0-dim tensors (no host sync here): rewards are
    beta × (policy − reference) log-ratios, averaged over pairs; accuracies is the fraction of
    pairs whose chosen reward exceeds the rejected one.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    # −log σ(x) via logsigmoid: exact for large |x| where log(sigmoid(x)) underflows.
    loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()
    if alpha:
        if chosen_nll is None:
            raise ValueError("dpo_loss: alpha != 0 needs chosen_nll")
        loss = loss + alpha * chosen_nll
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }
    return loss, metrics
