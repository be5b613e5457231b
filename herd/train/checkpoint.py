"""Training checkpoints: a herd checkpoint folder plus `train_state/`, checksummed and atomic.

  checkpoints/step-00000100/
    config.json, model.safetensors, tokenizer files   a herd checkpoint (`herd.load` reads it)
    train_state/optimizer.pt                          AdamW moments (tensors only)
    train_state/rng.pt                                torch CPU/CUDA and objective generator states
    train_state/state.json                            step, tokens seen, data cursor
    checksums.json                                    sha256 of every file above

Folders are written to a temporary sibling and renamed (complete or absent). On resume the newest
folder whose checksums all match is used; a damaged or partial one is skipped and reported, so a
run killed mid-write, or a disk that flipped a bit, never loads a bad state. Everything is loaded
with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from herd.checkpoint.io import read_herd_folder, save_herd_folder
from herd.config import ModelConfig

PREFIX = "step-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
) -> Path:
    """Write checkpoints/step-NNNNNNNN atomically, then drop all but the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{PREFIX}{step:08d}"

    def extra(tmp: Path) -> None:
        ts = tmp / "train_state"
        ts.mkdir()
        torch.save(optimizer_state, ts / "optimizer.pt")
        torch.save(rng, ts / "rng.pt")
        (ts / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        sums = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "checksums.json").write_text(json.dumps(sums, indent=2))

    save_herd_folder(config, weights, dst, tokenizer_files, overwrite=True, extra=extra)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary siblings are not listed)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def verify(path: Path) -> str | None:
    """None when every checksum matches, else what is wrong."""
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
        if _sha256(f) != digest:
            return f"{name} does not match its checksum"
    return None


def load_latest(folder: Path, on_skip) -> tuple[Path, dict] | None:
    """The newest intact checkpoint: (path, contents); `on_skip(path, reason)` for damaged ones."""
    for path in reversed(list_checkpoints(folder)):
        problem = verify(path)
        if problem is not None:
            on_skip(path, problem)
            continue
        config, weights = read_herd_folder(path)
        ts = path / "train_state"
        return path, {
            "config": config,
            "model": weights,
            "optimizer": torch.load(ts / "optimizer.pt", weights_only=True),
            "rng": torch.load(ts / "rng.pt", weights_only=True),
            "state": json.loads((ts / "state.json").read_text()),
        }
    return None
