"""Multilingual corpora for vocabulary building: sentences per language, with a held-out part.

A corpus is a folder of per-language text files, the language code taken from the file name
(`swh_Latn.txt`: one sentence or paragraph per line), or a JSONL file whose rows carry a `language`
and a `text` field. Every line goes to the held-out part or the training part by a hash of its
text (1 in 10 held out by default), so `herd vocab build` and `herd vocab compare` agree on which
lines are held out without writing a split anywhere.

ALP (average log-probability, XLM-V section 2 after Zheng et al. 2021) measures how well a
vocabulary serves a language: tokenize the language's text D with the vocabulary, estimate each
subword's unigram probability by its frequency in that tokenization, and average the summed
log-probabilities over sentences: ALP(D, V) = (1/|D|) sum_s sum_{w in s} log p_uni(w). Higher
(closer to 0) means fewer, more frequent pieces per sentence.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from herd.errors import HerdError

HELD_OUT_EVERY = 10


@dataclass
class Language:
    code: str
    train: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(len(s) for s in self.train)


def _held_out(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8")) % HELD_OUT_EVERY == 0


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HerdError(f"{path}: not UTF-8 (invalid byte at offset {e.start})") from None


def load_corpus(path: str | Path) -> dict[str, Language]:
    """language code -> Language, in sorted order; empty languages are errors."""
    path = Path(path)
    texts: dict[str, list[str]] = {}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".text"))
        if not files:
            raise HerdError(f"{path}: no per-language .txt files (e.g. swh_Latn.txt)")
        for f in files:
            texts[f.stem] = [ln.strip() for ln in _read_text(f).splitlines() if ln.strip()]
            if not texts[f.stem]:
                raise HerdError(f"{f}: empty language file (no text lines)")
    elif path.is_file() and path.suffix == ".jsonl":
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                lang, text = str(row["language"]), str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise HerdError(
                    f"{path}:{number}: expected a JSON object with 'language' and 'text'"
                ) from None
            texts.setdefault(lang, []).extend(x.strip() for x in text.splitlines() if x.strip())
        if not texts:
            raise HerdError(f"{path}: no rows")
    else:
        raise HerdError(f"{path}: expected a folder of <language>.txt files or a .jsonl file")
    corpus = {}
    for code in sorted(texts):
        lang = Language(code)
        for s in texts[code]:
            (lang.held_out if _held_out(s) else lang.train).append(s)
        if not lang.train:
            raise HerdError(f"{path}: language '{code}' has no training text")
        corpus[code] = lang
    return corpus


def alp(pieces: list[list[str]]) -> float:
    """ALP of a tokenized text (a list of sentences, each a list of pieces)."""
    counts = Counter(p for sentence in pieces for p in sentence)
    total = sum(counts.values())
    if not pieces or total == 0:
        return 0.0
    log_p = {p: math.log(c / total) for p, c in counts.items()}
    return sum(log_p[p] for sentence in pieces for p in sentence) / len(pieces)
