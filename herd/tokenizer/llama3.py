"""The Llama 3 tokenizer: tiktoken BPE ranks + the Llama 3 split pattern + 256 special tokens.

Ids are identical to Meta's reference tokenizer (llama-models `llama3/tokenizer.py`), including its
two guards: text is encoded in 400,000-character chunks, and runs of more than 25,000 consecutive
whitespace or non-whitespace characters are cut (tiktoken's regex is slow on such runs). Meta finds
those runs with a per-character Python loop; herd finds them with one regular-expression scan, so
ordinary text goes straight to tiktoken with no per-token Python work.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tiktoken

from herd.errors import HerdError
from herd.tokenizer.base import Tokenizer

PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256
NAMED_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
SPECIAL_NAMES = NAMED_SPECIAL + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL - len(NAMED_SPECIAL))
]
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000
# str.isspace() and the re module's \s agree (both use Python's Unicode whitespace table). The
# lookbehinds anchor each match at the start of a run, so the scan stays linear: without them the
# engine retries from every position inside a long run (quadratic on CJK text or minified code).
_LONG_RUN = re.compile(rf"(?<!\s)\s{{{MAX_RUN_CHARS + 1},}}|(?<!\S)\S{{{MAX_RUN_CHARS + 1},}}")


def load_ranks(path: Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file: one `base64-token rank` pair per line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HerdError(f"{path}: cannot read tokenizer file ({e.strerror})") from None
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise HerdError(
                f"{path}: line {number} is not 'base64-token rank' (not a tiktoken BPE file)"
            ) from None
    if not ranks:
        raise HerdError(f"{path}: empty tiktoken BPE file")
    return ranks


def is_tiktoken_file(path: Path) -> bool:
    """True when the file starts like a tiktoken ranks file (and not a sentencepiece protobuf)."""
    with open(path, "rb") as f:
        head = f.read(256)
    first = head.split(b"\n", 1)[0]
    parts = first.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return False
    try:
        base64.b64decode(parts[0], validate=True)
    except binascii.Error:
        return False
    return True


_WHITESPACE = re.compile(r"\s")
# A run longer than MAX_RUN_CHARS contains a whole window [k * WINDOW, (k + 1) * WINDOW).
_WINDOW = MAX_RUN_CHARS // 2


def _may_have_long_run(text: str) -> bool:
    """Cheap screen: does any aligned window consist of whitespace only, or hold none at all?

    In ordinary text each window finds whitespace within a few characters, so this costs a few
    operations per 12,500 characters; only texts that pass it get the exact (linear) regex scan.
    """
    for a in range(0, len(text) - _WINDOW + 1, _WINDOW):
        b = a + _WINDOW
        if text[a].isspace():
            if text[a:b].isspace():
                return True
        elif _WHITESPACE.search(text, a, b) is None:
            return True
    return False


def split_long_runs(text: str) -> Iterator[str]:
    """Meta's `_split_whitespaces_or_nonwhitespaces`, at C speed when there is nothing to cut."""
    if not _may_have_long_run(text):
        yield text
        return
    start = 0
    for run in _LONG_RUN.finditer(text):
        # Meta cuts every MAX_RUN_CHARS characters into a run, counting from the run's start.
        for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
            yield text[start:cut]
            start = cut
    yield text[start:]


class Llama3Tokenizer(Tokenizer):
    kind = "llama3-tiktoken"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        ranks = load_ranks(self.path)
        base = len(ranks)
        self.special_tokens = {name: base + i for i, name in enumerate(SPECIAL_NAMES)}
        self._enc = tiktoken.Encoding(
            name=self.path.name,
            pat_str=PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.stop_ids = [
            self.eos_id,
            self.special_tokens["<|eom_id|>"],
            self.special_tokens["<|eot_id|>"],
        ]
        self.chat_format = "llama3"
        self._special_ids = set(self.special_tokens.values())

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        if allow_special:
            encode = lambda s: self._enc.encode(s, allowed_special="all")  # noqa: E731
        else:
            encode = self._enc.encode_ordinary
        if len(text) <= MAX_RUN_CHARS:  # nothing to chunk or cut: straight to tiktoken
            return encode(text)
        ids: list[int] = []
        for i in range(0, len(text), MAX_ENCODE_CHARS):
            for piece in split_long_runs(text[i : i + MAX_ENCODE_CHARS]):
                ids.extend(encode(piece))
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self._enc.decode(ids)

    def _token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if i not in self._special_ids:
                out[i] = len(self._enc.decode_single_token_bytes(i))
        return out

    def files(self) -> list[Path]:
        return [self.path]
