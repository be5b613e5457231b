"""Applied from outside the model code, in torchtitan's order: activation checkpointing, then
compilation, then FSDP2 sharding (more than one device)."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each Transformer block in the backward pass instead of storing its activations."""
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
