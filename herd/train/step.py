"""One optimizer step's gradients: exact accumulation over micro-batches, with no host sync.

Every micro-batch's summed cross-entropy is divided by the number of loss targets in the whole
step (all micro-batches, all processes), so accumulating k micro-batches gives exactly the
gradient of one k-times larger batch, whatever share of each micro-batch carries loss (document
boundaries, prefix-LM prefixes, the ~15% infilled tokens of the masked objectives, SFT's
assistant tokens). Dividing each by its own count and then by k, as a mean of means, would weight
a token of a sparse micro-batch more than one of a dense one.

The counts are known on the host before the step starts (the loader counts them), so the only
collective is one all-reduce of k integers; the loss and the largest micro-batch loss stay on the
device until the trainer reads them at its next log step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist

from herd.data.loader import StepBatch
from herd.model.masks import PackedAttention


def global_counts(counts: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Loss targets per micro-batch summed over processes, as float64 on `device` (asynchronous:
    `counts` is pinned on CUDA, and an all-reduce does not wait for the host)."""
    counts = counts.to(device, non_blocking=True)
    if dist.is_initialized():
        dist.all_reduce(counts)
    return counts.double()


def nll_sum(model: Callable, micro) -> torch.Tensor:
    """The summed cross-entropy of a TrainBatch's targets (pretraining's and SFT's loss). The
    block mask (on CUDA) is built here, once for all layers."""
    packed = PackedAttention.of(micro.doc_ids, micro.bidirectional)
    return model(micro.inputs, packed=packed, targets=micro.targets)


def accumulate_gradients(
    forward: Callable,
    batch: StepBatch,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    loss_sum: Callable = nll_sum,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward through every micro-batch of `batch`; returns (the step's mean loss, the largest
    micro-batch mean loss), both over all processes, as device tensors. `loss_sum(forward,
    micro)` is a micro-batch's loss summed over what the loader counts (targets; DPO: pairs)."""
    counts = global_counts(batch.counts, device)
    total = counts.sum().clamp(min=1)
    world = dist.get_world_size() if dist.is_initialized() else 1
    # FSDP2 averages gradients over processes; scaled by the world size, each process's summed
    # loss over the step's global count gives the single-process gradient of the mean loss.
    scale = world / total
    sums = []
    for micro in batch.micro:
        micro = micro.to(device, non_blocking=True)
        with autocast():  # summed float32 loss (cross-entropy fused with the output layer)
            nll = loss_sum(forward, micro)
        (nll * scale.to(nll.dtype)).backward()
        sums.append(nll.detach().double())
    sums = torch.stack(sums)
    if dist.is_initialized():
        dist.all_reduce(sums)
    return sums.sum() / total, (sums / counts.clamp(min=1)).max()


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm in place; returns the norm before clipping (a device tensor;
    non-finite when a gradient is: the trainer then skips the update)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


def guarded_update(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step(), or nothing where `skip` (a 0/1 float tensor on the device) is 1.

    torch's fused Adam/AdamW read `found_inf` (the attribute GradScaler sets for them): where it
    is 1 they leave the weights, the moments and the step count as they were, all on the device,
    so the guard costs no host sync."""
    if not optimizer.defaults.get("fused"):
        if bool(skip):  # an optimizer without the fused kernel: decide on the host
            return
        optimizer.step()
        return
    optimizer.found_inf = skip
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf
