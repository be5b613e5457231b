"""Any Hugging Face `tokenizer.json`, through the `tokenizers` library.

Special tokens come from tokenizer_config.json beside the file (bos_token / eos_token / chat_format)
when present, else from conventional names. `tokenizers` normally splits special-token text out of
any input; herd keeps a second copy of the tokenizer with `encode_special_tokens` set, which encodes
such text as ordinary text, and uses it unless the caller allows special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFBackend

from herd.errors import HerdError
from herd.tokenizer.base import Tokenizer, replace_lone_surrogates

_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")
_STOP_NAMES = ("<|eot_id|>", "<|eom_id|>")


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-printable-character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class HFTokenizer(Tokenizer):
    kind = "hf-tokenizers"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._special = HFBackend.from_file(str(self.path))
            self._plain = HFBackend.from_file(str(self.path))
        except Exception as e:
            raise HerdError(f"{self.path}: not a valid tokenizer.json ({e})") from None
        self._plain.encode_special_tokens = True
        config = self._read_config()
        added = self._special.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in added.items() if t.special}
        self._special_ids = set(self.special_tokens.values())
        self.bos_id = self._lookup(config.get("bos_token"), _BOS_NAMES)
        self.eos_id = self._lookup(config.get("eos_token"), _EOS_NAMES)
        stops = {self._special.token_to_id(n) for n in _STOP_NAMES} | {self.eos_id}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self.chat_format = config.get("chat_format") or self._guess_chat_format()

    def _read_config(self) -> dict:
        path = self.path.with_name("tokenizer_config.json")
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HerdError(f"{path}: not valid JSON ({e})") from None
        out = {}
        for key in ("bos_token", "eos_token", "chat_format"):
            value = data.get(key)
            out[key] = value.get("content") if isinstance(value, dict) else value
        return out

    def _lookup(self, name: str | None, fallbacks: tuple[str, ...]) -> int | None:
        for candidate in (name, *fallbacks):
            if candidate and self._special.token_to_id(candidate) is not None:
                return self._special.token_to_id(candidate)
        return None

    def _guess_chat_format(self) -> str | None:
        if {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= set(self.special_tokens):
            return "llama3"
        if self.bos_id is not None and self.eos_id is not None:
            return "llama2"
        return None

    @property
    def vocab_size(self) -> int:
        return self._special.get_vocab_size(with_added_tokens=True)

    def _backend(self, allow_special: bool) -> HFBackend:
        return self._special if allow_special else self._plain

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        text = replace_lone_surrogates(text)
        return self._backend(allow_special).encode(text, add_special_tokens=False).ids

    def encode_batch(
        self,
        texts: Sequence[str],
        bos: bool = False,
        eos: bool = False,
        allow_special: bool = False,
        num_threads: int | None = None,
    ) -> list[list[int]]:
        # tokenizers parallelises batches itself (rayon; TOKENIZERS_PARALLELISM to turn off).
        texts = [replace_lone_surrogates(t) for t in texts]
        encoded = self._backend(allow_special).encode_batch(texts, add_special_tokens=False)
        return [self._frame(e.ids, bos, eos) for e in encoded]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._special.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def _is_byte_level(self) -> bool:
        decoder = json.loads(self._special.to_str()).get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
        return "ByteLevel" in kinds

    def _token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        if self._is_byte_level():
            table = _byte_decoder()
            for token, i in self._special.get_vocab(with_added_tokens=True).items():
                if i in self._special_ids:
                    continue
                if all(c in table for c in token):
                    out[i] = len(token)  # one printable character per byte
                else:  # an added non-special token stored as plain text
                    out[i] = len(token.encode("utf-8"))
            return out
        for i in range(self.vocab_size):  # other decoders: measure each token's own text
            if i not in self._special_ids:
                out[i] = len(self._special.decode([i]).encode("utf-8"))
        return out

    def files(self) -> list[Path]:
        config = self.path.with_name("tokenizer_config.json")
        return [self.path, *([config] if config.is_file() else [])]
