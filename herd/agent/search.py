"""Search backends for the agent: local BM25 indexes (bm25s), Python's own docs, any HTTP endpoint.

`herd index build DOCS --out DIR` turns text files (.txt, .md, .rst), JSONL and Parquet rows into
passages of about `chunk_words` words and writes a folder: bm25/ and titles/ (bm25s's own files
for passages and for their titles, loaded with memory mapping), passages.jsonl with
passages.offsets.npy (so a search reads only its k hits) and index.json, the manifest (format,
counts, tokenizer settings, sources, creation time). The folder is built beside its destination
and renamed into place: it is complete or absent.

With no index of its own the agent searches Python's documentation (the pydoc topics and the
docstrings of the standard library), built offline on first use and cached per Python version.
Users with a search service point the agent at it: any URL answering `?q=QUERY&n=K` with JSON.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import keyword
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS
from tqdm import tqdm

from herd.atomic_files import write_folder_atomically
from herd.errors import HerdError

FORMAT, VERSION = "herd-search-index", 1
TEXT_SUFFIXES = (".txt", ".md", ".rst")
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
TITLE_WEIGHT = 0.5  # chosen on a dozen questions to the stdlib index (see _write_index)
# NLTK's English stopwords (bm25s's STOPWORDS_EN_PLUS: agents search with questions, and "how",
# "does", "what" would outweigh the subject) except the words that name something in Python: a
# keyword ("for", "with"), a builtin ("all", "any") or a module ("re"). No stemmer: identifiers
# ("dumps", "indent") must match as written, and stemming needs PyStemmer, a compiled dependency.
STOPWORDS = sorted(
    set(STOPWORDS_EN_PLUS) - set(keyword.kwlist) - set(dir(builtins)) - sys.stdlib_module_names
)


# --- building ---------------------------------------------------------------------------------


def chunk(text: str, chunk_words: int) -> list[str]:
    """Paragraphs (blank-line separated) packed into passages of at most `chunk_words` words;
    a longer paragraph is cut into windows overlapping by a tenth, so no sentence is lost at a
    cut. Slices of the original keep its line breaks (code examples stay readable)."""
    passages, current, count = [], [], 0
    for para in re.split(r"\n\s*\n", text.strip()):
        spans = [m.span() for m in re.finditer(r"\S+", para)]
        if not spans:
            continue
        if count + len(spans) > chunk_words and current:
            passages.append("\n\n".join(current))
            current, count = [], 0
        if len(spans) <= chunk_words:
            current.append(para.strip())
            count += len(spans)
            continue
        step = max(1, chunk_words - chunk_words // 10)
        for start in range(0, len(spans), step):
            end = min(start + chunk_words, len(spans))
            passages.append(para[spans[start][0] : spans[end - 1][1]])
            if end == len(spans):
                break
    if current:
        passages.append("\n\n".join(current))
    return passages


def _files(source: str) -> list[Path]:
    path = Path(source)
    if path.is_file():
        if path.suffix not in (*TEXT_SUFFIXES, ".jsonl", ".parquet"):
            raise HerdError(f"{path}: not a .txt/.md/.rst, .jsonl or .parquet file")
        return [path]
    if not path.is_dir():
        raise HerdError(f"{path}: no such file or folder")
    found = []
    for root, dirs, names in os.walk(path):
        # Hidden entries include this module's own temporary folders, and an index kept inside
        # its documents' folder must not index itself on a rebuild.
        dirs[:] = sorted(d for d in dirs if d[0] != "." and _manifest(Path(root, d)) is None)
        found += [
            Path(root, n)
            for n in sorted(names)
            if not n.startswith(".") and n.endswith((*TEXT_SUFFIXES, ".jsonl", ".parquet"))
        ]
    return found


def _manifest(path: Path) -> dict | None:
    """The index.json of a herd search index at `path`, or None."""
    try:
        manifest = json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _field(row: dict, name: str, where: str, required: bool) -> str | None:
    value = row.get(name)
    if value is None and required and name not in row:
        raise HerdError(f'{where}: no "{name}" field (pass --text-field to name another)')
    if value is not None and not isinstance(value, str):
        raise HerdError(f'{where}: "{name}" is {type(value).__name__}, expected a string')
    return value


def _documents(path: Path, text_field: str, title_field: str):
    """(title, source, text) for each document of one file; rows with null or empty text are
    skipped (real datasets have a few), a missing field is an error."""
    if path.suffix in TEXT_SUFFIXES:
        try:
            yield path.stem, str(path), path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise HerdError(f"{path}: not UTF-8 text (byte {e.start})") from None
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise HerdError(f"{where}: not JSON ({str(e).splitlines()[0]})") from None
                if not isinstance(row, dict):
                    raise HerdError(f"{where}: expected a JSON object, got {type(row).__name__}")
                text = _field(row, text_field, where, required=True)
                title = _field(row, title_field, where, required=False)
                yield title or path.stem, _field(row, "url", where, False) or where, text or ""
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a non-Parquet file
            raise HerdError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
        names = table.schema_arrow.names
        if text_field not in names:
            raise HerdError(f'{path}: no "{text_field}" column (columns: {", ".join(names)})')
        columns = [c for c in (text_field, title_field, "url") if c in names]
        row_index = 0
        for batch in table.iter_batches(columns=columns):
            for row in batch.to_pylist():
                where = f"{path}#row={row_index}"
                row_index += 1
                text = _field(row, text_field, where, required=True)
                title = _field(row, title_field, where, required=False)
                yield title or path.stem, _field(row, "url", where, False) or where, text or ""


def build_index(
    sources: list[str],
    out: Path,
    text_field: str = "text",
    title_field: str = "title",
    chunk_words: int = 200,
    show_progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Index the documents of `sources` (files or folders) into the folder `out`; returns it."""
    if chunk_words < 1:
        raise HerdError(f"chunk_words must be at least 1, got {chunk_words}")
    if Path(out).exists() and not overwrite:  # before reading anything
        raise HerdError(f"{out}: already exists (pass --overwrite to replace it)")
    sources = [sources] if isinstance(sources, str | Path) else sources
    files = [f for s in sources for f in _files(str(s))]
    passages, documents = [], 0
    for path in tqdm(files, desc="reading", unit="file", disable=None if show_progress else True):
        for title, source, text in _documents(path, text_field, title_field):
            parts = chunk(text, chunk_words)
            documents += bool(parts)
            passages += [(title, source, p) for p in parts]
    if not passages:
        raise HerdError(f"{', '.join(map(str, sources)) or 'no sources'}: no documents with text")
    settings = {
        "sources": [str(s) for s in sources],
        "documents": documents,
        "chunk_words": chunk_words,
    }
    return _write_index(Path(out), passages, settings, show_progress, overwrite)


def _tokenize(texts: list[str], tokenizer: dict, show_progress: bool, return_ids: bool = True):
    return bm25s.tokenize(
        texts,
        lower=tokenizer["lower"],
        token_pattern=tokenizer["token_pattern"],
        stopwords=tokenizer["stopwords"],
        return_ids=return_ids,
        show_progress=show_progress,
    )


def _write_index(out, passages, settings, show_progress, overwrite) -> Path:
    tokenizer = {"lower": True, "token_pattern": TOKEN_PATTERN, "stopwords": STOPWORDS}

    def fill(tmp: Path) -> None:
        # Titles get a BM25 of their own (a field, as in BM25F): short and naming their subject
        # ('The "for" statement', "json.dumps"), a title hit is strong evidence that a passage's
        # body, among thousands that say "for", cannot give. TITLE_WEIGHT keeps it a refinement.
        vocabulary = {}
        for field, column in (("bm25", 2), ("titles", 0)):
            tokens = _tokenize([p[column] for p in passages], tokenizer, show_progress)
            model = bm25s.BM25()
            model.index(tokens, show_progress=show_progress)
            model.save(tmp / field, show_progress=False)
            vocabulary[field] = len(tokens.vocab)
        offsets = [0]
        with open(tmp / "passages.jsonl", "wb") as f:
            for i, (title, source, text) in enumerate(passages):
                row = {"id": i, "title": title, "source": source, "text": text}
                offsets.append(offsets[-1] + f.write(json.dumps(row).encode() + b"\n"))
        np.save(tmp / "passages.offsets.npy", np.asarray(offsets, dtype=np.int64))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "passages": len(passages),
            "vocabulary": vocabulary,
            "tokenizer": {**tokenizer, "stemmer": None},
            "bm25": {"method": model.method, "k1": model.k1, "b": model.b},
            "title_weight": TITLE_WEIGHT,
            **settings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "index.json").write_text(json.dumps(manifest, indent=2) + "\n")

    return write_folder_atomically(out, fill, overwrite=overwrite)


# --- searching --------------------------------------------------------------------------------


class SearchIndex:
    """A folder written by `build_index`: passages ranked by BM25 of their text plus
    `title_weight` times BM25 of their title."""

    def __init__(self, path: Path, manifest: dict, body, titles, offsets: np.ndarray):
        self.path, self.manifest, self.offsets = path, manifest, offsets
        self.body, self.titles = body, titles

    @classmethod
    def load(cls, path: Path | str) -> SearchIndex:
        path = Path(path)
        manifest = _manifest(path)
        if manifest is None:
            raise HerdError(
                f"{path}: not a search index (no herd index.json; build one with "
                "`herd index build DOCS --out DIR`)"
            )
        if manifest.get("version") != VERSION:
            raise HerdError(
                f"{path}/index.json: version {manifest.get('version')!r}, this herd "
                f"reads version {VERSION}; rebuild the index"
            )
        # Memory-mapped: a large index costs page cache, not process memory, and loads at once.
        try:
            body, titles = (
                bm25s.BM25.load(path / field, mmap=True, show_progress=False)
                for field in ("bm25", "titles")
            )
            offsets = np.load(path / "passages.offsets.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise HerdError(f"{path}: damaged search index ({e}); rebuild it") from None
        return cls(path, manifest, body, titles, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def scores(self, query: str) -> np.ndarray:
        """Every passage's score for `query` (0 where no word is shared)."""
        words = _tokenize([query], self.manifest["tokenizer"], False, return_ids=False)[0]
        total = np.zeros(len(self), dtype=np.float32)
        for model, weight in ((self.body, 1.0), (self.titles, self.manifest["title_weight"])):
            ids = model.get_tokens_ids(words)
            if ids:
                total += weight * model.get_scores_from_ids(ids)
        return total

    def search(self, query: str, k: int = 5) -> list[dict]:
        """The `k` best passages, each {"title", "text", "source", "score"}, best first; only
        passages sharing a word with the query."""
        if k < 1:
            raise HerdError(f"k must be at least 1, got {k}")
        scores = self.scores(query)
        top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k]
        top = sorted((i for i in top.tolist() if scores[i] > 0), key=lambda i: (-scores[i], i))
        results = []
        with open(self.path / "passages.jsonl", "rb") as f:
            for i in top:
                f.seek(int(self.offsets[i]))
                row = json.loads(f.readline())
                keep = {key: row[key] for key in ("title", "text", "source")}
                results.append({**keep, "score": float(scores[i])})
        return results


class HTTPSearch:
    """Any search service answering GET `url?q=QUERY&n=K` with JSON: a list of results or
    {"results": [...]}, each with text/snippet/content and title/url. Results without text are
    dropped; "score" is the service's own, or None."""

    def __init__(self, url: str, timeout: float = 10, headers: dict | None = None):
        self.url, self.timeout = url, timeout
        self.headers = {"User-Agent": "herd", "Accept": "application/json", **(headers or {})}

    def search(self, query: str, k: int = 5) -> list[dict]:
        sep = "&" if urllib.parse.urlsplit(self.url).query else "?"
        url = f"{self.url}{sep}{urllib.parse.urlencode({'q': query, 'n': k})}"
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as e:
            raise HerdError(f"{self.url}: HTTP {e.code} {e.reason}") from None
        except OSError as e:  # URLError (refused, unknown host), timeouts, resets
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise HerdError(f"{self.url}: no answer within {self.timeout} s") from None
            raise HerdError(f"{self.url}: request failed ({reason})") from None
        if status != 200:
            raise HerdError(f"{self.url}: HTTP {status}, expected 200")
        try:
            data = json.loads(body)
        except ValueError as e:
            raise HerdError(f"{self.url}: answer is not JSON ({str(e).splitlines()[0]})") from None
        items = data.get("results") if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
            raise HerdError(f'{self.url}: expected a JSON list of objects or {{"results": [...]}}')
        results = []
        for r in items:
            text = r.get("text") or r.get("snippet") or r.get("content")
            if isinstance(text, str) and text.strip():
                score = r.get("score")
                results.append(
                    {
                        "title": str(r.get("title") or r.get("url") or ""),
                        "text": text,
                        "source": str(r.get("url") or self.url),
                        "score": float(score) if isinstance(score, int | float) else None,
                    }
                )
        return results[:k]


def open_backend(spec: str | None, show_progress: bool = True):
    """None or "stdlib": Python's documentation; an http(s):// URL: HTTPSearch; else a folder."""
    if spec is None or spec == "stdlib":
        return SearchIndex.load(stdlib_index(show_progress=show_progress))
    if spec.startswith(("http://", "https://")):
        return HTTPSearch(spec)
    if not Path(spec).is_dir():
        raise HerdError(
            f"{spec}: no such index folder (expected 'stdlib', an http(s):// URL or "
            "a folder built by `herd index build`)"
        )
    return SearchIndex.load(spec)


# --- Python's documentation -------------------------------------------------------------------


def stdlib_index(
    cache_dir: Path | None = None, modules: list[str] | None = None, show_progress: bool = True
) -> Path:
    """The index of Python's own documentation, built on first use (offline) and cached in
    `cache_dir` (default $HERD_CACHE, else ~/.cache/herd) as stdlib-index-<python version>.
    `modules` limits the walk to those modules (and their submodules); [] gives the pydoc topics
    alone. A subset is cached under its own name, so it never stands in for the whole."""
    cache = Path(cache_dir or os.environ.get("HERD_CACHE") or Path.home() / ".cache" / "herd")
    name = f"stdlib-index-{platform.python_version()}"
    if modules is not None:
        name += "-" + hashlib.sha256(json.dumps(sorted(modules)).encode()).hexdigest()[:8]
    out = cache / name
    manifest = _manifest(out)
    if manifest is not None and manifest["version"] == VERSION:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "documents.jsonl"
        # A separate, isolated interpreter (-I: no cwd, no PYTHON* variables) does the imports:
        # whatever they register (atexit hooks, signal handlers, hundreds of modules) stays
        # out of the caller, which may be serving a model, and a crashing import cannot kill it.
        herd_root = str(Path(__file__).resolve().parents[2])
        code = (
            f"import sys; sys.path.insert(0, {herd_root!r}); "
            "from herd.agent.pydocs import write_stdlib_documents as w; "
            "w(sys.argv[1], None if sys.argv[2] == '-' else sys.argv[2].split(','), "
            "sys.argv[3] == '1')"
        )
        arg = "-" if modules is None else ",".join(modules)
        argv = [sys.executable, "-I", "-c", code, str(docs), arg, str(int(show_progress))]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise HerdError(
                f"{sys.executable}: walking the stdlib's docs exited with "
                f"{done.returncode} (see the messages above)"
            )
        with open(docs, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    passages = [(r["title"], r["source"], p) for r in rows for p in chunk(r["text"], 200)]
    settings = {
        "sources": [f"python-stdlib:{platform.python_version()}"],
        "modules": modules,
        "documents": len(rows),
        "chunk_words": 200,
    }
    # Another process may have built it meanwhile; both builds are equal, the last rename wins.
    return _write_index(out, passages, settings, show_progress, overwrite=True)
