"""Applied from outside the model code, in torchtitan's order: activation checkpointing, then
compilation of every block, then FSDP2 sharding (more than one device, herd/train/distributed.py).

Compiling each block rather than the whole (sharded) model keeps FSDP2's per-block hooks, which
gather a block's weights before its forward and free them after, outside the compiled graphs, and
compiles one graph that every block reuses (they share their code and shapes).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from herd.train.config import TrainConfig


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each Transformer block in the backward pass instead of storing its activations."""
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """torch.compile every Transformer block in place (parameter names do not change)."""
    for block in model.layers:
        block.compile()


def parallelize(
    model: nn.Module, train: TrainConfig, device: torch.device, world_size: int
) -> None:
    """Everything applied from outside, in order: recompute, compile, shard (FSDP2)."""
    if train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if train.compile:
        apply_compile(model)
    if world_size > 1:
        from herd.train.distributed import apply_fsdp

        apply_fsdp(model, device)
