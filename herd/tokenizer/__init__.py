"""Tokenizers behind one interface: Llama 3 (tiktoken), Llama 2 (sentencepiece), HF tokenizer.json.

`load_tokenizer(path)` takes a tokenizer file or a folder that carries one (a checkpoint folder, or
the folder of a llama2.c .bin). A `tokenizer.model` is either a tiktoken BPE ranks file (Llama 3) or
a sentencepiece protobuf (LLaMA / Llama 2); the first line tells which.
"""

from __future__ import annotations

from pathlib import Path

from herd.errors import HerdError
from herd.tokenizer.base import Tokenizer

__all__ = ["Tokenizer", "find_tokenizer", "load_tokenizer"]

# In order of preference when a folder holds several.
TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer.model")


def find_tokenizer(path: Path) -> Path | None:
    """The tokenizer file inside a folder (or beside a file), if any."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for name in TOKENIZER_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `Tokenizer` from a tokenizer file or a folder that carries one."""
    path = Path(path)
    if not path.exists():
        raise HerdError(f"{path}: no such tokenizer file or folder")
    file = path if path.is_file() else find_tokenizer(path)
    if file is None:
        raise HerdError(f"{path}: no tokenizer.json or tokenizer.model found")
    if file.suffix == ".json":
        from herd.tokenizer.hf import HFTokenizer

        return HFTokenizer(file)
    from herd.tokenizer.llama3 import Llama3Tokenizer, is_tiktoken_file

    try:
        tiktoken_format = is_tiktoken_file(file)
    except OSError as e:
        raise HerdError(f"{file}: cannot read tokenizer file ({e.strerror})") from None
    if tiktoken_format:
        return Llama3Tokenizer(file)
    from herd.tokenizer.sentencepiece_model import SentencePieceTokenizer

    return SentencePieceTokenizer(file)
