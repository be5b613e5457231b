"""More than one device: process groups, FSDP2 sharding, and full-state checkpoints.

Launched by torchrun (`torchrun --nproc-per-node N -m herd train CONFIG.toml`; multi-node adds
torchrun's `--nnodes`, `--node-rank` and `--rdzv-endpoint`), every process builds the same model
from the same seed, then `fully_shard` (FSDP2) shards each Transformer block and the root, with a
bf16-parameter / fp32-reduction mixed-precision policy on GPUs (torchtitan's order: activation
checkpointing, compile, then sharding). NCCL on GPUs, gloo on CPUs (used by the tests).

Checkpoints stay in the single-process format: model and optimizer states are gathered with
torch.distributed.checkpoint's state-dict API (full, CPU-offloaded) and written by rank 0, so a run
can resume on a different number of devices. (Sharded dcp.save for models too large to gather on
one host is not implemented yet.)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def local_device() -> torch.device:
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def apply_fsdp(model: nn.Module, device: torch.device) -> None:
    """Shard every block, then the root (embeddings, final norm, output), with FSDP2."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts (keyed by parameter names), on the CPU."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim_state: dict
) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
