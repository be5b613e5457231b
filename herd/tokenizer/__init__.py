"""Tokenizers behind one interface. This first cut reads Hugging Face `tokenizer.json` files.

`load_tokenizer(path)` takes a tokenizer file or a checkpoint folder that carries one.
"""

from __future__ import annotations

from pathlib import Path

from herd.errors import HerdError
from herd.tokenizer.hf import HFTokenizer

__all__ = ["HFTokenizer", "find_tokenizer", "load_tokenizer"]


def find_tokenizer(folder: Path) -> Path | None:
    """The tokenizer file a checkpoint folder (or the folder of a .bin file) carries, if any."""
    folder = folder if folder.is_dir() else folder.parent
    candidate = folder / "tokenizer.json"
    return candidate if candidate.is_file() else None


def load_tokenizer(path: str | Path) -> HFTokenizer:
    path = Path(path)
    if not path.exists():
        raise HerdError(f"{path}: no such tokenizer file or folder")
    file = path if path.is_file() else find_tokenizer(path)
    if file is None:
        raise HerdError(f"{path}: no tokenizer.json found")
    if file.suffix != ".json":
        raise HerdError(f"{file}: unsupported tokenizer file (expected tokenizer.json)")
    return HFTokenizer(file)
