"""More than one device: process groups, FSDP2 sharding, and full or sharded checkpoint states.

Launched by torchrun (`torchrun --nproc-per-node N -m herd train CONFIG.toml`; multi-node adds
torchrun's `--nnodes`, `--node-rank` and `--rdzv-endpoint`), every process builds the same model
from the same seed, then `fully_shard` (FSDP2) shards each Transformer block and the root, with a
bf16-parameter / fp32-reduction mixed-precision policy on GPUs (torchtitan's order: activation
checkpointing, compile, then sharding). NCCL on GPUs, gloo on CPUs (used by the tests).

Checkpoint states come in two forms (`train.checkpoint_format`; herd.train.checkpoint writes
the folders). Full: model and optimizer states are gathered with torch.distributed.checkpoint's
state-dict API (full, CPU-offloaded) and rank 0 writes the single-process format. Sharded (the
default with more than one process): nothing is gathered; every process saves its own FSDP shards
with `dcp.save` through the Hugging Face storage writer (safetensors files whose headers record
each piece's offsets, no pickled `.metadata`), so a model too large for one host can still be
checkpointed. DCP reshards at load, so either form resumes on any number of processes, a single
one without a process group included. A LoRA run's checkpoint gathers its adapters alone and
their optimizer moments, never the frozen base, and every process loads them back into its shards.

The optimizer state is stored as a flat dict of tensors, `<parameter name>.<exp_avg|exp_avg_sq|
step>`; param_groups are not stored, they are rebuilt from the run config (the learning rate is a
function of the step).
"""

from __future__ import annotations

import atexit
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from herd.errors import HerdError


def world() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        # Torn down before the interpreter exits: a process group left to die with the process
        # can abort in its threads' destructors ("terminate called without an active
        # exception"), failing a run that finished.
        atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def place(device: str, batch_size: int) -> tuple[int, int, torch.device, slice]:
    """(rank, world size, this process's device, its rows of each global batch) for
    `train.device` (auto: the local GPU under torchrun, else cuda if there is one, else cpu)."""
    rank, world_size = world()
    if world_size > 1 and device == "auto":
        here = local_device()
    elif device == "auto":
        here = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        here = torch.device(device)
    if batch_size % world_size:
        raise HerdError(
            f"data.batch_size {batch_size} (the global batch) is not divisible by "
            f"the {world_size} processes"
        )
    share = batch_size // world_size
    return rank, world_size, here, slice(rank * share, (rank + 1) * share)


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


def state_names(model: nn.Module) -> list[str]:
    """The model's state-dict keys as torch.distributed.checkpoint names them (wrapper prefixes
    such as activation checkpointing's removed); nothing is gathered."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return list(get_model_state_dict(model))


def gather_tensors(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of the model's state dict, unsharded, on the CPU, in every process (a
    collective: every process passes the same names). Only these are gathered: a LoRA run's
    adapters without its base, which may not fit one host."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    state = get_model_state_dict(model)  # this process's shards
    out = {}
    for name in names:
        t = state[name]
        out[name] = (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu()
    return out


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The unsharded optimizer state (keyed by parameter names), on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict,
    optim_state: dict,
    partial: bool = False,
) -> None:
    """Load unsharded states (each process passes the same ones) into this process's shards;
    `partial`: `weights` holds some of the model's tensors (a LoRA run's adapters), the rest stay
    as they are."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=not partial)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --- sharded states (torch.distributed.checkpoint) --------------------------------------------


def _flatten_optimizer(state: dict) -> dict[str, torch.Tensor]:
    """{"state": {fqn: {"step": t, "exp_avg": t, ...}}} -> {"fqn.step": t, "fqn.exp_avg": t}."""
    return {
        f"{fqn}.{name}": t for fqn, moments in state["state"].items() for name, t in moments.items()
    }


@contextmanager
def _single_process_ok():
    """DCP warns on every call without a process group; that is the intended use here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _sharded_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, tied: bool):
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    weights = get_model_state_dict(model)  # DTensors under FSDP2: this process's shards only
    if tied:  # one tensor under two names; safetensors refuses shared storage, so store it once
        weights.pop("output.weight", None)
    # For an optimizer that has not stepped yet this first creates its (zero) moments, which
    # gives resume the tensors to load into.
    return weights, get_optimizer_state_dict(model, optimizer)


def save_sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, tied: bool
) -> None:
    """Every process writes its shards to folder/model and folder/optimizer (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    weights, optim = _sharded_dicts(model, optimizer, tied)
    for name, state in (("model", weights), ("optimizer", _flatten_optimizer(optim))):
        # save_distributed: one file per process holding its own pieces (with their offsets),
        # rather than the writer's default of rank 0 writing full tensors.
        writer = HuggingFaceStorageWriter(str(folder / name), save_distributed=True)
        with _single_process_ok():
            dcp.save(state, storage_writer=writer, no_dist=not dist.is_initialized())


def load_sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, tied: bool
) -> None:
    """Load folder/model and folder/optimizer into this process's shards, whatever number of
    processes wrote them (DCP reads the pieces overlapping each local shard)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    weights, optim = _sharded_dicts(model, optimizer, tied)
    flat = _flatten_optimizer(optim)
    for name, state in (("model", weights), ("optimizer", flat)):
        reader = HuggingFaceStorageReader(str(folder / name))
        try:
            with _single_process_ok():
                dcp.load(state, storage_reader=reader, no_dist=not dist.is_initialized())
        except dcp.api.CheckpointException as e:  # every process raises it: DCP gathers failures
            why = next((ln for ln in reversed(str(e).splitlines()) if ln.strip()), "")
            raise HerdError(f"{folder / name}: does not fit this run's model ({why})") from None
    for key, t in flat.items():  # dcp.load fills tensors in place; put them back regardless
        fqn, name = key.rsplit(".", 1)
        optim["state"][fqn][name] = t
    if tied:
        weights["output.weight"] = weights["embed.weight"]
    set_model_state_dict(model, weights)
    set_optimizer_state_dict(model, optimizer, optim)
