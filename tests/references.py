"""The reference tokenizer files the tests compare herd against, all inside the repository or a
dev dependency, so the tests need nothing outside the checkout and its environment.

- Llama 2 / LLaMA: tests/data/llama2-tokenizer.model, committed with its licence (tests/data/).
- Llama 3: llama_models/llama3/tokenizer.model inside the installed `llama-models` package (a dev
  dependency in pyproject.toml), found through importlib without importing the package.

`llama2_tokenizer()` and `llama3_tokenizer()` return a path only after checking the file's SHA-256;
a missing or different file raises `ReferenceFileError`, whose message says how to fix it. Tests
therefore fail without their reference and never skip: a skipped parity test would look like a
passing one.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
LLAMA2_TOKENIZER = DATA / "llama2-tokenizer.model"
LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
LLAMA3_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"


class ReferenceFileError(RuntimeError):
    """A reference file the tests need is missing or is not the expected file."""


def llama3_tokenizer_location() -> Path:
    """Where the installed llama-models package keeps the Llama 3 tokenizer (not checked)."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceFileError(
            "the Llama 3 reference tokenizer comes from the llama-models package, which is not "
            "installed: install the dev dependencies (pip install -e '.[dev]', or make test)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"


def verified(path: Path, sha256: str, fix: str) -> Path:
    """`path` when it exists and its bytes hash to `sha256`; else ReferenceFileError with `fix`."""
    if not path.is_file():
        raise ReferenceFileError(f"reference file {path} is missing: {fix}")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != sha256:
        raise ReferenceFileError(
            f"reference file {path} has sha256 {digest}, expected {sha256}: {fix}"
        )
    return path


@cache
def llama2_tokenizer() -> Path:
    """Meta's LLaMA / Llama 2 sentencepiece model (32,000 pieces, BOS 1, EOS 2)."""
    fix = "restore it from git (git checkout -- tests/data/llama2-tokenizer.model)"
    return verified(LLAMA2_TOKENIZER, LLAMA2_SHA256, fix)


@cache
def llama3_tokenizer() -> Path:
    """Meta's Llama 3 tiktoken ranks file (128,000 ranks + 256 special tokens)."""
    fix = "reinstall the pinned dev dependency llama-models (pip install -e '.[dev]')"
    return verified(llama3_tokenizer_location(), LLAMA3_SHA256, fix)
