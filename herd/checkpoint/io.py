"""herd checkpoint folders: config.json + safetensors (sharded with an index), written atomically.

Layout of a folder:
  config.json                      {"format": "herd", "format_version": 1, "dtype": ..., "model": {...}}
  model.safetensors                or model-00001-of-0000N.safetensors + model.safetensors.index.json
  tokenizer files                  copied from the source when known (tokenizer.json, tokenizer.model)

A sharded training checkpoint (herd.train.checkpoint) has no model.safetensors: its weights are
torch.distributed.checkpoint shards in `train_state/model/` (safetensors files, one per writing
process, each recording the offsets of its pieces in its header). `read_herd_folder` stitches them
together on the CPU without a process group, so `herd.load`, `herd generate` and `herd convert`
(which consolidates) take either layout.

A folder is either complete or absent: everything is written into a hidden temporary sibling, each
file fsynced, then the sibling is renamed into place. An existing destination is never touched
unless the caller asks to overwrite, and then only after the new folder is complete.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from herd.atomic_files import write_folder_atomically
from herd.errors import HerdError
from herd.model.config import ModelConfig
from herd.model.families import model_class
from herd.model.transformer import Transformer

FORMAT_VERSION = 1
INDEX_NAME = "model.safetensors.index.json"
SHARDED_MODEL_DIR = "train_state/model"  # DCP shards of a sharded training checkpoint
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


def read_dcp_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Full tensors from a torch.distributed.checkpoint folder written with the Hugging Face
    (safetensors) storage writer, on the CPU, in this process alone (no process group needed).

    Its metadata comes from the safetensors headers; nothing is unpickled (the default DCP reader
    would unpickle a `.metadata` file, which these folders do not have)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    reader = HuggingFaceStorageReader(str(folder))
    try:
        meta = reader.read_metadata().state_dict_metadata
        if not meta:
            raise HerdError(f"{folder}: no tensors in its .safetensors files")
        for name, m in meta.items():
            # Pieces of one tensor never overlap, so a missing shard file leaves it short, and
            # DCP would leave that part of the tensor unwritten rather than fail.
            if sum(math.prod(c.sizes) for c in m.chunks) < math.prod(m.size):
                raise HerdError(
                    f"{folder}: tensor '{name}' is only partly there (is a shard file missing?)"
                )
        tensors = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()}
        with warnings.catch_warnings():  # DCP warns that there is no process group: intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(tensors, storage_reader=reader, no_dist=True)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
        raise HerdError(f"{folder}: unreadable sharded checkpoint ({e})") from None
    return tensors


def read_herd_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config = read_herd_config(folder)
    has_single = (folder / "model.safetensors").exists() or (folder / INDEX_NAME).exists()
    if not has_single and (folder / SHARDED_MODEL_DIR).is_dir():
        return config, read_dcp_folder(folder / SHARDED_MODEL_DIR)
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
    tokenizer = list(tokenizer)

    def fill(tmp: Path) -> None:
        write_herd_config(tmp, config, state_dict.values(), tokenizer)
        save_safetensors(state_dict, tmp, max_shard_bytes)
        if extra is not None:
            extra(tmp)

    return write_folder_atomically(Path(dst), fill, overwrite)


def write_herd_config(
    folder: Path, config: ModelConfig, tensors: Iterable[torch.Tensor], tokenizer: Iterable[Path]
) -> None:
    """config.json (its dtype read off `tensors`) and copies of the tokenizer files."""
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    dtype = dtype_name(dtypes.pop()) if len(dtypes) == 1 else "mixed"
    meta = {"format": "herd", "format_version": FORMAT_VERSION, "dtype": dtype}
    cfg = {**meta, "model": config.to_dict()}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in tokenizer:
        shutil.copy2(f, folder / Path(f).name)


def instantiate(
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    source: str = "checkpoint",
) -> Transformer:
    """A Transformer holding `state_dict` (herd names), after checking every name and shape."""
    with torch.device("meta"):
        model = model_class(config)(config)
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
