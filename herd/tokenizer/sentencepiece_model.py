"""The Llama 2 (and LLaMA) sentencepiece tokenizer, with Meta's BOS/EOS rules.

Meta's reference (`llama/tokenizer.py`) is `sp.encode(text)` with BOS prepended and EOS appended on
request; sentencepiece never parses control-symbol text ("<s>") out of input, so user content cannot
inject special tokens. Batches go through sentencepiece's own multi-threaded encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece

from herd.errors import HerdError
from herd.tokenizer.base import Tokenizer, replace_lone_surrogates


class SentencePieceTokenizer(Tokenizer):
    kind = "llama2-sentencepiece"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise HerdError(f"{self.path}: not a sentencepiece model ({e})") from None
        sp = self._sp
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else None
        self.special_tokens = {
            sp.id_to_piece(i): i
            for i in range(sp.get_piece_size())
            if sp.is_control(i) or sp.is_unknown(i)
        }
        self.stop_ids = [self.eos_id] if self.eos_id is not None else []
        self.chat_format = "llama2" if self.bos_id is not None and self.eos_id is not None else None

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        try:
            return self._sp.encode(text)
        except RuntimeError:  # sentencepiece refuses strings that are not valid UTF-8
            return self._sp.encode(replace_lone_surrogates(text))

    def encode_batch(
        self,
        texts: Sequence[str],
        bos: bool = False,
        eos: bool = False,
        allow_special: bool = False,
        num_threads: int | None = None,
    ) -> list[list[int]]:
        batch = self._sp.encode(
            [replace_lone_surrogates(t) for t in texts],
            add_bos=bos and self.bos_id is not None,
            add_eos=eos and self.eos_id is not None,
            num_threads=num_threads or os.cpu_count() or 1,
        )
        return [list(ids) for ids in batch]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        # sentencepiece renders control symbols as nothing either way.
        return self._sp.decode([int(i) for i in ids])

    def _token_bytes(self) -> np.ndarray:
        sp = self._sp
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            if sp.is_byte(i):
                out[i] = 1
            else:
                out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def files(self) -> list[Path]:
        return [self.path]
