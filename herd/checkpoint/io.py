"""herd checkpoint folders: config.json + safetensors (sharded with an index), written atomically.

Layout of a folder:
  config.json                      {"format": "herd", "format_version": 1, "dtype": ..., "model": {...}}
  model.safetensors                or model-00001-of-0000N.safetensors + model.safetensors.index.json
  tokenizer files                  copied from the source when known (tokenizer.json, tokenizer.model)

A folder is either complete or absent: everything is written into a hidden temporary sibling, each
file fsynced, then the sibling is renamed into place. An existing destination is never touched
unless the caller asks to overwrite, and then only after the new folder is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from herd.config import ModelConfig
from herd.errors import HerdError
from herd.model.transformer import Transformer

FORMAT_VERSION = 1
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
DEFAULT_SHARD_BYTES = 5 * 1024**3

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise HerdError(f"unknown dtype '{name}' (expected one of: {', '.join(DTYPES)})") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise HerdError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise HerdError(f"{path}: expected a JSON object")
    return data


# --- atomic folder writing --------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder_atomically(
    dst: Path, fill: Callable[[Path], None], overwrite: bool = False
) -> Path:
    """Call fill(tmp_dir) to populate a temporary sibling of `dst`, then move it into place."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise HerdError(f"{dst}: already exists (pass --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        fill(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _fsync(tmp)
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.rename(dst, old / dst.name)
            os.rename(tmp, dst)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dst)
        _fsync(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


# --- safetensors with sharding ----------------------------------------------------------------


def save_safetensors(
    tensors: dict[str, torch.Tensor],
    folder: Path,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `model.safetensors`, or numbered shards plus an index when larger than a shard."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / fname, metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a folder: the index's shards, or the single model.safetensors."""
    index = folder / INDEX_NAME
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HerdError(f"{index}: missing object 'weight_map'")
        return [folder / f for f in dict.fromkeys(weight_map.values())]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise HerdError(f"{folder}: no model.safetensors or {INDEX_NAME} found")
    return found


def load_safetensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise HerdError(f"{f}: file not found (listed in the index)")
        try:
            tensors.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise HerdError(f"{f}: unreadable safetensors file ({e})") from None
    return tensors


# --- herd folders -----------------------------------------------------------------------------


def is_herd_folder(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == "herd"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_herd_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    data = read_json(path)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise HerdError(f"{path}: format_version {version!r} is not supported (expected 1)")
    if "model" not in data:
        raise HerdError(f"{path}: missing key 'model'")
    return ModelConfig.from_dict(data["model"], source=f"{path}: model")


def read_herd_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config = read_herd_config(folder)
    return config, load_safetensors(safetensors_files(folder))


def tokenizer_files(folder: Path) -> list[Path]:
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def save_herd_folder(
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    dst: Path,
    tokenizer: Iterable[Path] = (),
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete herd checkpoint folder atomically; `extra(tmp)` may add files first."""
    state_dict = dict(state_dict)
    if config.tie_embeddings:
        state_dict.pop("output.weight", None)  # stored once; re-tied at load
    dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    dtype = dtype_name(dtypes.pop()) if len(dtypes) == 1 else "mixed"
    tokenizer = list(tokenizer)

    def fill(tmp: Path) -> None:
        meta = {"format": "herd", "format_version": FORMAT_VERSION, "dtype": dtype}
        cfg = {**meta, "model": config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        save_safetensors(state_dict, tmp, max_shard_bytes)
        for f in tokenizer:
            shutil.copy2(f, tmp / Path(f).name)
        if extra is not None:
            extra(tmp)

    return write_folder_atomically(Path(dst), fill, overwrite)


def instantiate(
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    source: str = "checkpoint",
) -> Transformer:
    """A Transformer holding `state_dict` (herd names), after checking every name and shape."""
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("output.weight", None)
        state_dict = {k: v for k, v in state_dict.items() if k != "output.weight"}
    for name, shape in expected.items():
        if name not in state_dict:
            raise HerdError(f"{source}: missing tensor '{name}' (expected shape {list(shape)})")
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise HerdError(
                f"{source}: tensor '{name}' has shape {list(got)}, expected {list(shape)} "
                "from the config"
            )
    extra = sorted(set(state_dict) - set(expected))
    if extra:
        raise HerdError(f"{source}: unexpected tensor '{extra[0]}'")
    if dtype is None:
        dtype = state_dict["embed.weight"].dtype
    tensors = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    model.init_buffers()
    return model.eval()
