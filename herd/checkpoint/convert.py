"""Format detection and conversion between herd, Hugging Face, Meta and llama2.c checkpoints.

Every reader returns a `ModelConfig` and a state dict in herd's tensor names and RoPE layout; every
writer takes the same. `load` (the public `herd.load`) reads any format into a ready model;
`convert` rewrites any readable format as a herd or Hugging Face folder, carrying tokenizer files
(a vision model's Hugging Face folder is transformers' Mllama, herd/checkpoint/mllama.py);
with `merge_lora` its source is a PEFT LoRA adapter folder, merged into its base checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from herd.checkpoint import hf, io, llama2c, meta, mllama
from herd.errors import HerdError
from herd.model.config import ModelConfig
from herd.model.transformer import Transformer

FORMATS = ("herd", "hf", "meta", "llama2c")


def detect_format(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise HerdError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".bin":
            return "llama2c"
        raise HerdError(
            f"{path}: a file, but not a llama2.c .bin model (expected a folder or .bin)"
        )
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise HerdError(f"{path}: a LoRA adapter folder, not a checkpoint (pass --merge-lora)")
    if io.is_herd_folder(path):
        return "herd"
    if meta.is_meta_folder(path):
        return "meta"
    if (path / "config.json").is_file():
        return "hf"
    raise HerdError(
        f"{path}: not a checkpoint folder (expected config.json, params.json or a .bin file)"
    )


def read_config(path: str | Path, fmt: str = "auto") -> ModelConfig:
    """The architecture of a checkpoint without reading its weights (where the format allows)."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "herd":
        return io.read_herd_config(path)
    if fmt == "hf":
        return _hf_kind(path).read_hf_config(path)
    if fmt == "llama2c":
        return llama2c.read_llama2c_config(path)
    return read_checkpoint(path, fmt)[0]  # Meta: shapes come from the shards


def read_checkpoint(
    path: str | Path, fmt: str = "auto"
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise HerdError(f"unknown format '{fmt}' (expected auto, {', '.join(FORMATS)})")
    detected = detect_format(path)
    fmt = detected if fmt == "auto" else fmt
    if fmt == "llama2c" and not path.is_file():
        raise HerdError(f"{path}: --from llama2c expects a .bin file")
    if fmt != "llama2c" and not path.is_dir():
        raise HerdError(f"{path}: --from {fmt} expects a folder")
    if fmt == "herd" and _holds_adapters_only(path):
        return _merged_adapter_checkpoint(path)
    readers = {
        "herd": io.read_herd_folder,
        "hf": lambda folder: _hf_kind(folder).read_hf_folder(folder),
        "meta": meta.read_meta_folder,
        "llama2c": llama2c.read_llama2c,
    }
    return readers[fmt](path)


def tokenizer_files(path: Path) -> list[Path]:
    """Tokenizer files that travel with a checkpoint (beside a llama2.c .bin, inside a folder)."""
    return io.tokenizer_files(path if path.is_dir() else path.parent)


def load(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    fmt: str = "auto",
) -> Transformer:
    """A ready `Transformer` (eval mode) from a herd, HF or Meta folder or a llama2.c .bin file."""
    config, state_dict = read_checkpoint(Path(path), fmt)
    return io.instantiate(config, state_dict, device, io.parse_dtype(dtype), source=str(path))


def convert(
    src: str | Path,
    dst: str | Path,
    src_format: str = "auto",
    dst_format: str = "herd",
    dtype: str | None = None,
    overwrite: bool = False,
    merge_lora: bool = False,
    base: str | Path | None = None,
) -> Path:
    """Rewrite a checkpoint in another format; validates every tensor before writing anything.

    With `merge_lora`, `src` is a PEFT LoRA adapter folder: its base checkpoint (`base`, else the
    adapter's `base_model_name_or_path`, read as `src_format`) gets W + (alpha / r) B A in every
    adapted projection, and is written with the base's tokenizer files."""
    src, dst = Path(src), Path(dst)
    if dst_format not in ("herd", "hf"):
        raise HerdError(f"unknown target format '{dst_format}' (expected herd or hf)")
    if base is not None and not merge_lora:
        raise HerdError("--base is only meaningful with --merge-lora")
    if dst.exists() and not overwrite:
        raise HerdError(f"{dst}: already exists (pass --overwrite to replace it)")
    if dst.resolve() == src.resolve():
        raise HerdError(f"{dst}: destination is the source")
    target_dtype = io.parse_dtype(dtype)
    if merge_lora:
        from herd.model import lora

        base = _adapter_base(src, base)
        if dst.resolve() == base.resolve():
            raise HerdError(f"{dst}: destination is the base checkpoint")
        model = lora.load_adapter(load(base, "cpu", target_dtype, src_format), src)
        state_dict = lora.merge_lora(model)
        src = base  # the tokenizer files come from the base
    else:
        model = load(src, "cpu", target_dtype, src_format)  # checks names and shapes
        state_dict = {k: v for k, v in model.state_dict().items()}
    writer = io.save_herd_folder
    if dst_format == "hf":
        if model.config.speech is not None:  # never write the text model alone, silently
            raise HerdError(
                f"{src}: a speech model has no Hugging Face form (transformers has no Llama 3 "
                "speech adapter); convert it --to herd"
            )
        if model.config.video is not None:
            raise HerdError(
                f"{src}: a video model has no Hugging Face form (transformers' Mllama has no "
                "video adapter); convert it --to herd"
            )
        writer = hf.write_hf_folder if model.config.vision is None else mllama.write_hf_folder
    return writer(model.config, state_dict, dst, tokenizer_files(src), overwrite=overwrite)


def _hf_kind(folder: Path):
    """The module that reads a Hugging Face folder: Llama 3.2 Vision's, or the Llama one."""
    return mllama if mllama.is_mllama_folder(folder) else hf


def _holds_adapters_only(folder: Path) -> bool:
    """A LoRA run's training checkpoint: adapters (PEFT's files) and no model weights."""
    from herd.model.lora import ADAPTER_WEIGHTS

    weights = ("model.safetensors", io.INDEX_NAME, io.SHARDED_MODEL_DIR)
    return (folder / ADAPTER_WEIGHTS).is_file() and not any((folder / w).exists() for w in weights)


def _merged_adapter_checkpoint(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The base a LoRA checkpoint's adapter_config.json names, with the adapters merged in, so
    `herd.load`, `herd generate` and `herd chat` take a LoRA run's checkpoints as they are."""
    from herd.model import lora
    from herd.model.families import added_parts, build_model

    base = _adapter_base(folder, None)
    config = io.read_herd_config(folder)
    if added_parts(config) and not added_parts(read_config(base)):
        # a vision or speech adapter trained with LoRA on a text model: the model of the
        # folder's config, its text weights the base's; the added parts come with the adapters
        model = build_model(config)
        missing, unexpected = model.load_state_dict(read_checkpoint(base)[1], strict=False)
        new = tuple(f"{part}." for part in added_parts(config))
        if unexpected or any(not name.startswith(new) for name in missing):
            wrong = (unexpected or [n for n in missing if not n.startswith(new)])[0]
            raise HerdError(f"{base}: weight '{wrong}' does not fit the model of {folder}")
    else:
        model = load(base)
    model = lora.load_adapter(model, folder)
    return model.config, lora.merge_lora(model)


def _adapter_base(adapter: Path, base: str | Path | None) -> Path:
    """The base checkpoint of a LoRA adapter folder: `base` if given, else the one it names."""
    from herd.model.lora import read_adapter_config

    _, named = read_adapter_config(adapter)  # validates the adapter before any weights are read
    if base is not None:
        base = Path(base)
        if not base.exists():
            raise HerdError(f"{base}: base checkpoint not found")
        return base
    if not named:
        raise HerdError(
            f"{adapter}/adapter_config.json names no base_model_name_or_path (pass --base)"
        )
    if not Path(named).exists():
        raise HerdError(
            f"{named}: base checkpoint named by {adapter}/adapter_config.json not found "
            "(pass --base with a local copy)"
        )
    return Path(named)
