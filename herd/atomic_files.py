"""Files and folders that are complete or absent, and content checksums.

Everything herd writes for later stages to read (checkpoints, token shards, manifests, tokenizers,
evaluation results) is written to a temporary sibling, fsynced, and renamed into place, so a crash
or a full disk leaves the previous version (or nothing), never half a file. No torch here: data,
tokenizer, vocab and eval use it without loading the model stack.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from herd.errors import HerdError

# --- atomic folder writing --------------------------------------------------------------------


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, write) -> Path:
    """`write(f)` into a temporary sibling of `path` (binary), fsync it, rename it into place:
    the file is complete or absent, and an older version stays until the new one is whole. The
    temporary's name is unique, so processes writing one file at once (runs of a sweep sharing a
    DPO reference table) never mix their bytes: the last rename wins, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (checkpoint and shard checksums)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
        publish_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def publish_folder(tmp: Path, dst: Path) -> None:
    """fsync every file and folder under the complete `tmp`, then rename it to `dst` (replacing
    an existing `dst` only once the new one is in place)."""
    for f in tmp.rglob("*"):
        fsync_path(f)  # files and sub-folders (their entries) alike
    fsync_path(tmp)
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.rename(dst, old / dst.name)
        os.rename(tmp, dst)
        shutil.rmtree(old)
    else:
        os.rename(tmp, dst)
    fsync_path(dst.parent)
