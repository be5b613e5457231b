"""Token shards: `herd data prepare` writes them, training and evaluation read them (memory-mapped).

Layout of a prepared folder:
  manifest.json               tokenizer, dtype, sources, per-split shard list (documents, tokens,
                              UTF-8 bytes for bits-per-byte, sha256 of every file)
  tokenizer/                  a copy of the tokenizer files, so the folder describes itself
  train-00000.bin / .idx.npy  tokens (uint16 when the vocabulary fits, else uint32) and the start
  val-00000.bin   / .idx.npy  offset of every document (plus the end), i.e. document boundaries

Each document is stored as BOS + tokens + EOS. A document goes to the validation split when a hash
of its stable id falls below `val_fraction`, so the split never depends on order or machine.
Documents are grouped into shards by a character budget before tokenizing, so a rerun recognises
finished shards (same documents, same tokenizer, checksums intact) and skips them.

A prepared folder is never left inconsistent: a shard's file name carries a hash of its tokens
(train-00000-<hash>.bin), so a rerun never overwrites a file the current manifest names with
different content; the manifest is replaced (atomically) only once every shard it names is
written, and only then are the files it no longer names deleted. A run that fails half-way (a
bad file under `on_bad_file = "fail"`, a kill) leaves the old manifest and its shards as they
were, deletes what it wrote, and leaves no tokenizer/ folder in a folder it created.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from herd.atomic_files import file_sha256, write_file_atomically
from herd.data.sources import Document, describe_sources, iter_documents
from herd.errors import HerdError
from herd.tokenizer import Tokenizer, load_tokenizer

FORMAT = "herd-tokens"
VERSION = 1
SPLITS = ("train", "val")
# Shard files herd writes (the unhashed names are those of folders prepared before the hash).
SHARD_FILE = re.compile(r"^(train|val)-\d{5}(-[0-9a-f]{12})?\.(bin|idx\.npy)$")


def _is_val(doc_id: str, val_fraction: float) -> bool:
    digest = hashlib.sha1(doc_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def _group_digest(docs: list[Document]) -> str:
    h = hashlib.sha1()
    for d in docs:
        h.update(d.id.encode("utf-8", "surrogatepass"))
        h.update(len(d.text).to_bytes(8, "little"))
    return h.hexdigest()


class _ShardWriter:
    def __init__(self, out: Path, tok: Tokenizer, manifest: dict, threads: int | None) -> None:
        self.out, self.tok, self.manifest, self.threads = out, tok, manifest, threads
        self.dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
        self.previous = {s["name"]: s for split in SPLITS for s in manifest["splits"][split]}
        self.fresh = {split: [] for split in SPLITS}
        self.skipped = 0
        self.written: list[Path] = []  # files this run created (removed if it fails)
        self.warnings: list[str] = []  # files skipped under on_bad_file = "skip"

    def _still_valid(self, entry: dict | None, digest: str) -> bool:
        if entry is None or entry.get("digest") != digest:
            return False
        files = (self.out / entry["file"], self.out / entry["index"])
        return all(f.is_file() for f in files) and file_sha256(files[0]) == entry["sha256"]

    def flush(self, split: str, docs: list[Document]) -> dict:
        name = f"{split}-{len(self.fresh[split]):05d}"
        digest = _group_digest(docs)
        entry = self.previous.get(name)
        if self._still_valid(entry, digest):
            self.skipped += 1
        else:
            encoded = self.tok.encode_batch(
                [d.text for d in docs], bos=True, eos=True, num_threads=self.threads
            )
            lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(docs))
            offsets = np.zeros(len(docs) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            tokens = np.concatenate([np.asarray(ids, dtype=self.dtype) for ids in encoded])
            data = tokens.tobytes()
            sha = hashlib.sha256(data).hexdigest()
            stem = f"{name}-{sha[:12]}"  # new content never takes a name the manifest uses
            bin_path, idx_path = self.out / f"{stem}.bin", self.out / f"{stem}.idx.npy"
            for path, write in (
                (bin_path, lambda f: f.write(data)),
                (idx_path, lambda f: np.save(f, offsets)),
            ):
                if not path.exists():
                    self.written.append(path)
                write_file_atomically(path, write)
            entry = {
                "name": name,
                "file": bin_path.name,
                "index": idx_path.name,
                "documents": len(docs),
                "tokens": int(offsets[-1]),
                "bytes": sum(len(d.text.encode("utf-8", "replace")) for d in docs),
                "digest": digest,
                "sha256": sha,
            }
        self.fresh[split].append(entry)
        return entry


def _tokenizer_digest(tok: Tokenizer) -> str:
    return hashlib.sha256(b"".join(file_sha256(f).encode() for f in tok.files())).hexdigest()


def prepare(
    sources: list[str],
    tokenizer: str | Path,
    out: str | Path,
    val_fraction: float = 0.01,
    shard_chars: int = 50_000_000,
    field: str = "text",
    on_bad_file: str = "fail",
    num_threads: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Tokenize `sources` into shards under `out`; returns the manifest path."""
    if not 0.0 <= val_fraction < 1.0:
        raise HerdError(f"--val-fraction {val_fraction}: expected a value in [0, 1)")
    if shard_chars <= 0:
        raise HerdError(f"--shard-chars {shard_chars}: expected a positive number")
    tok = load_tokenizer(tokenizer)
    out = Path(out)
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    settings = {
        "tokenizer_sha256": _tokenizer_digest(tok),
        "val_fraction": val_fraction,
        "shard_chars": shard_chars,
        "field": field,
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **settings,
        "splits": {split: [] for split in SPLITS},
    }
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        changed = [k for k, v in settings.items() if old.get(k) != v]
        if changed:
            raise HerdError(
                f"{out}: holds shards prepared with a different {changed[0]}; use another --out"
            )
        manifest = old
    for stale in out.glob(".tokenizer.tmp-*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.glob("*.tmp"):  # a shard write that was killed
        if SHARD_FILE.match(stale.name.removesuffix(".tmp")):
            stale.unlink()
    writer = _ShardWriter(out, tok, manifest, num_threads)
    staged = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp-", dir=out))
    try:
        for f in tok.files():
            shutil.copy2(f, staged / f.name)
        _write_shards(sources, field, on_bad_file, val_fraction, shard_chars, writer, show_progress)
        tok_dir = out / "tokenizer"
        if manifest_path.exists():  # the same tokenizer (checked above): the same files
            shutil.rmtree(staged)
        else:  # a folder no manifest describes: whatever tokenizer/ it holds is replaced
            shutil.rmtree(tok_dir, ignore_errors=True)
            staged.rename(tok_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        for path in writer.written:  # nothing the old manifest names: their names are new
            path.unlink(missing_ok=True)
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    manifest.update(
        splits=writer.fresh,
        dtype=np.dtype(writer.dtype).name,
        tokenizer={**tok.describe(), "path": "tokenizer/" + tok.path.name},
        sources=describe_sources(sources),
        skipped_files=writer.warnings,
        totals={
            split: {
                k: sum(s[k] for s in writer.fresh[split]) for k in ("documents", "tokens", "bytes")
            }
            for split in SPLITS
        },
    )
    write_file_atomically(manifest_path, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    # Only now that the new manifest is in place: the shards no manifest names any more.
    named = {s[k] for split in SPLITS for s in writer.fresh[split] for k in ("file", "index")}
    for path in out.iterdir():
        if SHARD_FILE.match(path.name) and path.name not in named:
            path.unlink()
    return manifest_path


def _write_shards(
    sources, field, on_bad_file, val_fraction, shard_chars, writer: _ShardWriter, show_progress
) -> None:
    """Tokenize every document into `writer`'s shards, split by `val_fraction`."""
    pending: dict[str, list[Document]] = {split: [] for split in SPLITS}
    chars = dict.fromkeys(SPLITS, 0)
    warnings: list[str] = []
    bar = tqdm(desc="tokenizing", unit="doc", disable=None if show_progress else True)
    for doc in iter_documents(sources, field, on_bad_file, warnings):
        split = "val" if _is_val(doc.id, val_fraction) else "train"
        pending[split].append(doc)
        chars[split] += len(doc.text)
        if chars[split] >= shard_chars:
            entry = writer.flush(split, pending[split])
            bar.update(entry["documents"])
            pending[split], chars[split] = [], 0
    for split in SPLITS:
        if pending[split]:
            bar.update(writer.flush(split, pending[split])["documents"])
    bar.close()
    for w in warnings:
        tqdm.write(f"warning: {w}")
    writer.warnings = warnings
    if not writer.fresh["train"]:
        raise HerdError(f"sources {', '.join(sources)}: no documents with text found")


class TokenShards:
    """Read side: memory-mapped tokens and document offsets of one split."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        try:
            self.manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise HerdError(f"{self.folder}: no manifest.json (run `herd data prepare`)") from None
        if self.manifest.get("format") != FORMAT:
            raise HerdError(f"{path}: not a herd token-shard manifest")

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.folder / self.manifest["tokenizer"]["path"])

    def shards(self, split: str) -> list[tuple[np.memmap, np.ndarray]]:
        if split not in self.manifest["splits"]:
            raise HerdError(f"split '{split}' not in {self.folder} (expected one of {SPLITS})")
        out = []
        for s in self.manifest["splits"][split]:
            tokens = np.memmap(self.folder / s["file"], dtype=self.manifest["dtype"], mode="r")
            out.append((tokens, np.load(self.folder / s["index"])))
        return out

    def totals(self, split: str) -> dict:
        return self.manifest["totals"][split]
