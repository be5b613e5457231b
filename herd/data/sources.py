"""Document sources for `herd data prepare`: text files and folders, JSONL, Parquet, Hugging Face
datasets, and the embedded default corpus (the running interpreter's standard-library source).

Every source yields `Document`s in a deterministic order with a stable id (the file's path within
its source, plus line or row), so the train/validation split and the shard layout are the same on
every run and every machine with the same inputs, wherever the corpus is stored. Files that are
not UTF-8 are reported with their path and byte offset, then skipped or fatal (`on_bad_file`).
"""

from __future__ import annotations

import json
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from herd.errors import HerdError

STDLIB = "stdlib"
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ".c", ".h", ".js", ".html", ".tex"}
# Parts of the standard-library tree that are not the library itself.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class Document:
    id: str  # stable: "path" or "path:line" or "name:row", the path relative to its source
    text: str


def stdlib_files() -> list[Path]:
    """The .py files of the running interpreter's standard library, sorted (no tests, no packages
    installed into it)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in root.rglob("*.py")
        if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1])
    ]
    if not files:
        raise HerdError(f"{root}: no standard-library .py files found for the 'stdlib' corpus")
    return sorted(files)


def _decode(path: Path, data: bytes, on_bad_file: str, warnings: list[str]) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        message = f"{path}: invalid UTF-8 at byte {e.start}"
        if on_bad_file == "fail":
            raise HerdError(f"{message} (pass --on-bad-file skip to skip such files)") from None
        warnings.append(message + "; skipped")
        return None


def _jsonl(path: Path, text: str, field: str, name: str) -> Iterator[Document]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise HerdError(f"{path}: line {number} is not JSON") from None
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise HerdError(f"{path}: line {number} has no string field '{field}'")
        yield Document(f"{name}:{number}", value)


def _parquet(path: Path, field: str, name: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HerdError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise HerdError(f"{path}: not a readable Parquet file ({e})") from None
    if field not in table.schema_arrow.names:
        raise HerdError(f"{path}: no column '{field}' (columns: {table.schema_arrow.names})")
    row = 0
    for batch in table.iter_batches(columns=[field]):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield Document(f"{name}:{row}", value)
            row += 1


def _hf_dataset(name: str, field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise HerdError(
            f"'{name}' is not a file or folder; for a Hugging Face dataset install `datasets`"
        ) from None
    try:
        stream = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as e:
        raise HerdError(f"dataset '{name}': cannot be streamed ({e})") from None
    for row, record in enumerate(stream):
        value = record.get(field)
        if isinstance(value, str):
            yield Document(f"{name}:{row}", value)


def _file_documents(path: Path, field: str, on_bad_file: str, warnings: list[str], name: str):
    """Documents of one file; `name` (its path within its source) is the stem of their ids."""
    if path.suffix == ".parquet":
        yield from _parquet(path, field, name)
        return
    text = _decode(path, path.read_bytes(), on_bad_file, warnings)
    if text is None:
        return
    if path.suffix == ".jsonl":
        yield from _jsonl(path, text, field, name)
    elif text.strip():
        yield Document(name, text)


def source_files(source: str) -> list[Path] | None:
    """The files a source names, or None when it is not a path (a dataset name)."""
    if source == STDLIB:
        return stdlib_files()
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        suffixes = TEXT_SUFFIXES | {".jsonl", ".parquet"}
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise HerdError(f"{path}: folder holds no text, JSONL or Parquet files")
        return files
    if "/" in source and not source.startswith((".", "/")) and not path.exists():
        return None  # "org/name": a Hugging Face dataset
    raise HerdError(f"{source}: no such file or folder (or 'stdlib', or a dataset 'org/name')")


def iter_documents(
    sources: list[str],
    field: str = "text",
    on_bad_file: str = "fail",
    warnings: list[str] | None = None,
) -> Iterator[Document]:
    """All documents of all sources, in order."""
    if not sources:
        raise HerdError("no sources given (files, folders, 'stdlib' or a dataset name)")
    warnings = warnings if warnings is not None else []
    for source in sources:
        files = source_files(source)
        if files is None:
            yield from _hf_dataset(source, field)
            continue
        root = _source_root(source)
        for path in files:
            name = path.relative_to(root).as_posix()
            yield from _file_documents(path, field, on_bad_file, warnings, name)


def _source_root(source: str) -> Path:
    """The folder document ids are relative to: a folder source itself, a file's folder, the
    standard library's root. Ids (and so the hashed train/val split) then do not depend on
    where a corpus lives or how its path was spelled."""
    if source == STDLIB:
        return Path(sysconfig.get_paths()["stdlib"])
    path = Path(source)
    return path if path.is_dir() else path.parent


def describe_sources(sources: list[str]) -> list[str]:
    return [f"{STDLIB} (Python {sys.version.split()[0]})" if s == STDLIB else s for s in sources]
