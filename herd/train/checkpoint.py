"""Training checkpoints: a herd checkpoint folder plus `train_state/`, checksummed and atomic.

Two layouts (`train.checkpoint_format`: full, sharded, or auto = sharded with several processes):

  checkpoints/step-00000100/                        full: one process writes everything
    config.json, model.safetensors, tokenizer files   a herd checkpoint (`herd.load` reads it)
    train_state/optimizer.pt                          AdamW moments (tensors only)
    train_state/rng.pt                                torch CPU/CUDA generator states
    train_state/state.json                            step, tokens seen, data cursor, stability
    train_state/monitor.safetensors                   the stability monitor's kept gradients
                                                      (when a monitored step follows)
    checksums.json                                    sha256 of every file above

  checkpoints/step-00000100/                        sharded: every process writes its shards
    config.json, tokenizer files                      as above, without model.safetensors
    train_state/model/shard-0000R-model-00001-of-00001.safetensors
    train_state/optimizer/shard-0000R-model-00001-of-00001.safetensors
                                                      torch.distributed.checkpoint through its
                                                      Hugging Face storage writer: one file per
                                                      process R, the offsets of its pieces in
                                                      the header, no pickled .metadata
    train_state/rng-rank{R}.pt                        each process's RNG states (tensors only)
    train_state/state.json, monitor.safetensors,      as above (the monitor's gradients are rank
    checksums.json                                    0's shards: rank 0 writes the records)

  checkpoints/step-00000100/                        LoRA ([lora] r > 0): the adapters alone
    config.json, tokenizer files                      as above, without model.safetensors
    adapter_model.safetensors, adapter_config.json    PEFT's layout; adapter_config.json names
                                                      the base ([model] checkpoint), so
                                                      `herd.load` merges the two, and PEFT loads
                                                      the adapter onto the base's HF export
    train_state/...                                   as in full (the optimizer holds the
                                                      adapters' moments only)

The sharded optimizer files hold `<parameter>.exp_avg`, `.exp_avg_sq` and `.step`; param_groups
are rebuilt from the run config. Each process keeps its own RNG file because processes' torch RNG
states differ (batches draw from per-row seeds, not from a generator state); a run resumed on
more processes than wrote the checkpoint gives the extra ones rank 0's states.
`herd.load` reads a sharded folder too (herd.checkpoint.io stitches the model shards together).

Folders are written to a temporary sibling and renamed (complete or absent); in the sharded case
all processes write into one sibling with a fixed name on the shared filesystem, and rank 0 renames
it after a barrier. On resume the newest folder whose checksums all match is used; a damaged or
partial one is skipped and reported, so a run killed mid-write, or a disk that flipped a bit, never
loads a bad state. Everything is loaded with `weights_only=True` or from safetensors. A write
killed half-way leaves its hidden temporary sibling behind; the next start removes it
(`remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from herd.atomic_files import file_sha256, fsync_path, publish_folder, write_folder_atomically
from herd.checkpoint.io import (
    read_herd_config,
    read_herd_folder,
    save_herd_folder,
    write_herd_config,
)
from herd.errors import HerdError
from herd.model.config import ModelConfig
from herd.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from herd.train import distributed

PREFIX = "step-"
FORMATS = ("auto", "full", "sharded")
MONITOR_FILE = "monitor.safetensors"


def resolve_format(name: str, world_size: int, lora: bool = False) -> str:
    """'full', 'sharded' or 'adapter' for train.checkpoint_format (auto: sharded with several
    processes; with LoRA the adapters alone, which are small enough to gather anywhere)."""
    if name not in FORMATS:
        raise HerdError(f"train.checkpoint_format '{name}': expected auto, full or sharded")
    if lora:
        if name == "sharded":
            raise HerdError(
                "train.checkpoint_format sharded: LoRA runs save the adapters alone (auto or full)"
            )
        return "adapter"
    if name == "auto":
        return "sharded" if world_size > 1 else "full"
    return name


def _prune(folder: Path, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def save_training_checkpoint(
    folder: Path,
    step: int,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    rng: dict,
    tokenizer_files: list[Path],
    keep: int,
    monitor: dict[str, torch.Tensor] | None = None,
    adapter: tuple[dict[str, torch.Tensor], dict] | None = None,
    extra_files=None,
) -> Path:
    """Write checkpoints/step-NNNNNNNN atomically, then drop all but the newest `keep`. With
    `adapter` (PEFT-named tensors, adapter_config.json) the folder holds those instead of
    `weights`. `extra_files(tmp)` adds a stage's own files (PPO's value model) before the
    checksums are taken, so they are verified on resume like the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{PREFIX}{step:08d}"

    def extra(tmp: Path) -> None:
        ts = tmp / "train_state"
        ts.mkdir()
        torch.save(optimizer_state, ts / "optimizer.pt")
        torch.save(rng, ts / "rng.pt")
        (ts / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        if monitor:
            save_file(monitor, ts / MONITOR_FILE)
        if extra_files is not None:
            extra_files(tmp)
        sums = {
            str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / "checksums.json").write_text(json.dumps(sums, indent=2))

    if adapter is None:
        save_herd_folder(config, weights, dst, tokenizer_files, overwrite=True, extra=extra)
    else:  # LoRA: the adapters in PEFT's layout, not the (frozen, known) base weights

        def fill(tmp: Path) -> None:
            tensors, adapter_config = adapter
            write_herd_config(tmp, config, tensors.values(), tokenizer_files)
            save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
            extra(tmp)

        write_folder_atomically(dst, fill, overwrite=True)
    _prune(folder, keep)
    return dst


def save_sharded_checkpoint(
    folder: Path,
    step: int,
    config: ModelConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    rng: dict,
    tokenizer_files: list[Path],
    keep: int,
    device: torch.device,
    monitor: dict[str, torch.Tensor] | None = None,
) -> Path:
    """The sharded layout; a collective: every process calls it with its own `rng` (rank 0's
    `monitor` tensors are the ones written)."""
    rank, world = distributed.world()
    dst = folder / f"{PREFIX}{step:08d}"
    # A name every process can compute without communicating; hidden, so never listed as a
    # checkpoint, and cleared first in case a killed run left one behind.
    tmp = folder / f".{dst.name}.tmp-sharded"
    ts = tmp / "train_state"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        ts.mkdir(parents=True)
        write_herd_config(tmp, config, model.parameters(), tokenizer_files)
        (ts / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        if monitor:
            save_file(monitor, ts / MONITOR_FILE)
    distributed.barrier()
    distributed.save_sharded_state(model, optimizer, ts, config.tie_embeddings)
    torch.save(rng, ts / f"rng-rank{rank}.pt")
    fsync_path(ts / f"rng-rank{rank}.pt")
    distributed.barrier()
    sums = _checksums(tmp, rank, world, device)
    if rank == 0:
        try:
            (tmp / "checksums.json").write_text(json.dumps(sums, indent=2))
            publish_folder(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(folder, keep)
    distributed.barrier()
    return dst


def _checksums(tmp: Path, rank: int, world: int, device: torch.device) -> dict[str, str]:
    """sha256 of every file under `tmp`, each process hashing its share (a collective)."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    # Every process must list the same files, or the sums below would not line up; equal
    # counts everywhere iff world * sum(n^2) == sum(n)^2.
    total, squares = distributed.all_reduce_sum([len(files), len(files) ** 2], device)
    if world * squares != total**2:
        raise HerdError(
            f"{tmp}: the processes see different files; sharded checkpoints need a folder "
            "shared by all of them (or set train.checkpoint_format = 'full')"
        )
    digests = [0.0] * (32 * len(files))
    for i in range(rank, len(files), world):
        digests[32 * i : 32 * (i + 1)] = bytes.fromhex(file_sha256(tmp / files[i]))
    digests = distributed.all_reduce_sum(digests, device)  # bytes 0..255 are exact in float64
    return {
        f: bytes(int(b) for b in digests[32 * i : 32 * (i + 1)]).hex() for i, f in enumerate(files)
    }


def check_same_model(path: Path, saved: ModelConfig, current: ModelConfig) -> None:
    """A one-line error naming every model field in which a checkpoint differs from the run."""
    a, b = saved.to_dict(), current.to_dict()
    changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in a | b if a.get(k) != b.get(k)]
    if changed:
        raise HerdError(
            f"{path}: the checkpoint's model differs from this run's config "
            f"({'; '.join(changed)}); resume with the run's own config.toml"
        )


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the hidden siblings a killed checkpoint write left behind (`.step-N.tmp-*`, and
    `.step-N.old-*` from a replace); returns what was removed. A replace killed between its two
    renames leaves `step-N` only inside `.step-N.old-*`: that copy is put back first. Call
    before any write starts."""
    if not folder.is_dir():
        return []
    stale = [
        p
        for p in folder.iterdir()
        if p.is_dir()
        and p.name.startswith(f".{PREFIX}")
        and (".tmp-" in p.name or ".old-" in p.name)
    ]
    for p in stale:
        name = p.name[1:].split(".", 1)[0]  # .step-00000008.old-x1y2 -> step-00000008
        if ".old-" in p.name and (p / name).is_dir() and not (folder / name).exists():
            (p / name).rename(folder / name)
        shutil.rmtree(p, ignore_errors=True)
    return stale


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint folder (checkpoints/step-NNNNNNNN) was written at."""
    return int(path.name[len(PREFIX) :])


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary siblings are not listed)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=checkpoint_step)


def verify(path: Path) -> str | None:
    """None when every checksum matches and no shard is unlisted, else what is wrong."""
    sums_path = path / "checksums.json"
    if not sums_path.is_file():
        return "no checksums.json"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return "checksums.json is not JSON"
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if file_sha256(f) != digest:
            return f"{name} does not match its checksum"
    # The DCP reader loads every .safetensors file of a shard folder, listed or not.
    for f in sorted(path.glob("train_state/*/*.safetensors")):
        if str(f.relative_to(path)) not in sums:
            return f"{f.relative_to(path)} is not in checksums.json"
    return None


def load_latest(
    folder: Path, on_skip, rank: int = 0, before: int | None = None
) -> tuple[Path, dict] | None:
    """The newest intact checkpoint (of a step below `before`, if given): (path, contents);
    `on_skip(path, reason)` for damaged ones.

    contents["format"] is "full" (with "model" and "optimizer" state dicts) or "sharded" (their
    shards stay on disk, in train_state/model and train_state/optimizer, for DCP to load)."""
    for path in reversed(list_checkpoints(folder)):
        if before is not None and checkpoint_step(path) >= before:
            continue
        problem = verify(path)
        if problem is not None:
            on_skip(path, problem)
            continue
        ts = path / "train_state"
        state = json.loads((ts / "state.json").read_text())
        monitor = load_file(ts / MONITOR_FILE) if (ts / MONITOR_FILE).is_file() else {}
        if (ts / "model").is_dir():
            rng = ts / f"rng-rank{rank}.pt"
            rng = rng if rng.is_file() else ts / "rng-rank0.pt"
            return path, {
                "format": "sharded",
                "config": read_herd_config(path),
                "rng": torch.load(rng, weights_only=True),
                "state": state,
                "monitor": monitor,
            }
        if (path / ADAPTER_WEIGHTS).is_file():
            config, weights = read_herd_config(path), load_file(path / ADAPTER_WEIGHTS)
        else:
            config, weights = read_herd_folder(path)
        return path, {
            "format": "adapter" if (path / ADAPTER_WEIGHTS).is_file() else "full",
            "config": config,
            "model": weights,
            "optimizer": torch.load(ts / "optimizer.pt", weights_only=True),
            "rng": torch.load(ts / "rng.pt", weights_only=True),
            "state": state,
            "monitor": monitor,
        }
    return None
