"""Direct preference optimisation: response log-probabilities, the loss, and reference log-probs.

DPO (Rafailov et al., 2023) trains the policy π directly on preference pairs (prompt, chosen y_c,
rejected y_r) against a frozen reference π_ref. Llama 3 (§4.1.4) adds a scaled NLL term on the
chosen response, which stabilises training and keeps the chosen responses' formatting:

    L = −log σ(β[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]) + α · NLL(y_c)

with β = 0.1 and α = 0.2, log π(y) summed over the response's content tokens only: header and
termination tokens are masked out of both responses (mask value 1 marks the content; the data
side's masks, herd/posttrain/chat_data.py), as Llama 3 masks them because they are shared by both
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

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from herd.errors import HerdError
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


# --- reference log-probs, computed once -----------------------------------------------------

REFERENCE_KEY = "reference_logps"
# Bumped whenever the same inputs would give other numbers (the pass's arithmetic) or the file's
# layout changes: a table of another format is recomputed, never read.
REFERENCE_FORMAT = "2"


def _rows_sha256(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()


def _replace_atomically(path: Path, data: bytes) -> None:
    """herd.atomic_files.write_file_atomically with a temporary of its own: the runs of a sweep
    started together share one table, and a temporary name they shared would mix their bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_reference(
    path: Path, rows: torch.Tensor, complete: bool, fingerprint: Mapping[str, str] | None = None
) -> None:
    """The rows so far (or all of them) with the fingerprint of what they were computed from,
    the format, and a checksum of the rows, all in the safetensors metadata."""
    from safetensors.torch import save

    rows = rows.float().contiguous()
    meta = {
        **(fingerprint or {}),
        "format": REFERENCE_FORMAT,
        "complete": "true" if complete else "false",
        "pairs": str(rows.shape[0]),
        "rows_sha256": _rows_sha256(rows),
    }
    _replace_atomically(Path(path), save({REFERENCE_KEY: rows}, metadata=meta))


def _read_reference(path: Path, fingerprint: Mapping[str, str] | None) -> tuple[torch.Tensor, bool]:
    """(rows, complete) of a stored table; HerdError saying why it cannot be used: unreadable,
    damaged (rows that do not match their checksum), or written for another fingerprint."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            rows = f.get_tensor(REFERENCE_KEY)
    except FileNotFoundError:
        raise HerdError(f"{path}: not found") from None
    except Exception as e:  # safetensors raises its own types for damaged files
        raise HerdError(f"{path}: not a readable reference table ({e})") from None
    if rows.ndim != 2 or rows.shape[1] != 2 or rows.dtype != torch.float32:
        raise HerdError(f"{path}: '{REFERENCE_KEY}' is {rows.dtype} {tuple(rows.shape)}")
    if meta.get("pairs", str(rows.shape[0])) != str(rows.shape[0]):
        raise HerdError(f"{path}: {rows.shape[0]} rows, its metadata says {meta['pairs']}")
    if "rows_sha256" in meta and meta["rows_sha256"] != _rows_sha256(rows):
        raise HerdError(f"{path}: damaged (its rows do not match their checksum)")
    if fingerprint is not None:
        for key, value in {**fingerprint, "format": REFERENCE_FORMAT}.items():
            if meta.get(key) != value:
                raise HerdError(f"{path}: computed for another {key}")
    return rows, meta.get("complete") == "true"


def load_reference_logps(
    path: str | Path, partial: bool = False, fingerprint: Mapping[str, str] | None = None
) -> torch.Tensor:
    """The stored reference log-probs [N, 2] (float32; columns chosen, rejected; row i = pair i
    in data order). A file that `reference_logps` has not finished is refused unless `partial`;
    with `fingerprint`, so is one computed for anything else (each of its keys is compared)."""
    path = Path(path)
    rows, complete = _read_reference(path, fingerprint)
    if not complete and not partial:
        raise HerdError(f"{path}: reference log-probs incomplete ({rows.shape[0]} pairs so far)")
    return rows


def _scored_width(mask: torch.Tensor) -> torch.Tensor:
    """Per row [B], the positions its log-prob needs: up to its last scored token (a position
    past it changes nothing before it under causal attention, so it is cut off)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (positions * mask.bool()).amax(dim=1).clamp(min=1)


def _window_logps(
    model: Callable[..., torch.Tensor],
    batch: PreferenceBatch,
    pad_id: int,
    max_tokens: int | None,
    device: torch.device | None,
) -> torch.Tensor:
    """[B, 2] (chosen, rejected) log-probs of a batch, in its order, from forwards over its pairs
    sorted by length, each cut to its longest scored row and holding at most `max_tokens`
    positions ([2 x pairs, width]; at least one pair): little padding, and forwards as large as
    the caller allows (without autograd they hold one layer's activations at a time)."""
    width = torch.maximum(_scored_width(batch.chosen_mask), _scored_width(batch.rejected_mask))
    order = torch.argsort(width, stable=True)
    widths = width[order].tolist()
    out = torch.empty(len(widths), 2)
    start = 0
    while start < len(widths):
        stop = start + 1  # ascending widths: a group is as wide as its last pair
        while stop < len(widths) and (
            max_tokens is None or 2 * (stop + 1 - start) * widths[stop] <= max_tokens
        ):
            stop += 1
        rows, w = order[start:stop], widths[stop - 1]
        part = PreferenceBatch(*(t[rows, :w] for t in batch))
        if device is not None:
            part = PreferenceBatch(*(t.to(device) for t in part))
        logps = preference_logps(model, part, pad_id)
        out[rows] = torch.stack([logps.chosen, logps.rejected], dim=1).float().cpu()
        start = stop
    return out


def reference_logps(
    model: Callable[..., torch.Tensor],
    batches: Iterable[PreferenceBatch],
    path: str | Path | None = None,
    context: Callable[[], contextlib.AbstractContextManager] | None = None,
    pad_id: int = 0,
    save_every: int = 16,
    fingerprint: Mapping[str, str] | None = None,
    max_tokens: int | None = None,
    device: torch.device | None = None,
    write: bool = True,
    log: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Reference log-probs of every pair, [N, 2] float32 on CPU (chosen, rejected), no gradient.

    `model` is the reference: a separate frozen copy, or the policy itself with `context` a
    zero-argument callable returning the context under which it acts as the reference (with
    LoRA: its adapters disabled). `batches` come in data order; each is scored by
    `_window_logps` (sorted by length, forwards of at most `max_tokens` positions, moved to
    `device`), so results do not depend on how the pairs are batched beyond float rounding.

    With `path` the rows are read from there when a complete table for `fingerprint` (string
    metadata naming what the numbers were computed from) is stored, and resumed from the pairs
    already stored when a partial one is; a table that is unreadable, damaged or for another
    fingerprint is recomputed, not trusted. With `write` too, the rows are stored there
    (safetensors, atomically, the fingerprint in the metadata) every `save_every` batches and at
    the end. `log` hears what was found.
    """
    path = Path(path) if path is not None else None
    say = log or (lambda _: None)
    done = torch.zeros(0, 2)
    if path is not None and path.exists():
        try:
            done, complete = _read_reference(path, fingerprint)
        except HerdError as e:
            say(f"{e}: recomputing it")
        else:
            if complete:
                say(f"reusing {path} ({done.shape[0]} pairs)")
                return done
            say(f"resuming {path} after the {done.shape[0]} pairs stored")
    elif path is not None:
        say(f"computing {path}")
    stored = done.shape[0]
    rows, seen, since_save = [done], 0, 0
    # inference_mode, not just no_grad: no version counters or views tracked for autograd. The
    # rows leave it through torch.cat below, outside it, so the table is an ordinary tensor.
    with torch.inference_mode(), (context or contextlib.nullcontext)():
        for batch in batches:
            batch = PreferenceBatch(*batch)
            B = batch.chosen_ids.shape[0]
            skip = min(max(stored - seen, 0), B)  # pairs stored by an earlier run
            seen += B
            if skip == B:
                continue
            if skip:
                batch = PreferenceBatch(*(t[skip:] for t in batch))
            rows.append(_window_logps(model, batch, pad_id, max_tokens, device))
            since_save += 1
            if path is not None and write and since_save == save_every:
                _save_reference(path, torch.cat(rows), False, fingerprint)
                since_save = 0
    if seen < stored:
        raise HerdError(f"{path}: holds {stored} pairs, the data only {seen}")
    result = torch.cat(rows)
    if path is not None and write:
        _save_reference(path, result, True, fingerprint)
    return result
