"""The one tokenizer interface every backend implements (tiktoken, sentencepiece, HF tokenizers).

Callers see `encode(text, bos=, eos=)`, `decode(ids)`, `encode_batch(texts)`, the special-token ids,
`vocab_size`, `token_bytes` (bytes of text each token stands for, for bits-per-byte) and
`encode_dialog(messages)` (chat formats, with a loss mask). Special-token text typed into content
(say a literal "<|eot_id|>") is encoded as ordinary text unless `allow_special=True`: prompt
injection through the tokenizer is impossible by default.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np


def replace_lone_surrogates(text: str) -> str:
    """Lone UTF-16 surrogates (legal in a Python str, not encodable as UTF-8) become U+FFFD,
    as tiktoken does, so every backend accepts every Python string."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer(ABC):
    """Text <-> token ids, with special tokens and a chat format."""

    #: short name of the backend and family, e.g. "llama3-tiktoken"
    kind: str = "tokenizer"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.special_tokens: dict[str, int] = {}
        self.bos_id: int | None = None
        self.eos_id: int | None = None
        self.pad_id: int | None = None
        #: ids that end a generation (end of text, end of turn, end of message)
        self.stop_ids: list[int] = []
        #: "llama3", "llama2" or None: how `encode_dialog` lays out a conversation
        self.chat_format: str | None = None

    # --- implemented by each backend ---------------------------------------------------------

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def _encode(self, text: str, allow_special: bool) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of `ids`; special tokens appear as their text unless `skip_special`."""

    @abstractmethod
    def _token_bytes(self) -> np.ndarray: ...

    @abstractmethod
    def files(self) -> list[Path]:
        """The files a checkpoint folder must carry to rebuild this tokenizer."""

    # --- shared behaviour ----------------------------------------------------------------------

    def encode(
        self, text: str, bos: bool = False, eos: bool = False, allow_special: bool = False
    ) -> list[int]:
        """Token ids of `text`, optionally framed by BOS/EOS."""
        return self._frame(self._encode(text, allow_special), bos, eos)

    def _frame(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        """Add BOS in front and EOS at the end, when asked and the tokenizer has them."""
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        bos: bool = False,
        eos: bool = False,
        allow_special: bool = False,
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """`encode` over many texts in parallel threads (the backends release the GIL).

        Each task takes a contiguous slice of texts rather than one text, so the pool's per-task
        cost (~100 us) is paid a few times per thread, not once per document.
        """
        threads = min(num_threads or os.cpu_count() or 1, len(texts))
        if threads <= 1:
            return [self.encode(t, bos, eos, allow_special) for t in texts]
        step = -(-len(texts) // (4 * threads))
        slices = [texts[i : i + step] for i in range(0, len(texts), step)]

        def encode_slice(part: Sequence[str]) -> list[list[int]]:
            return [self.encode(t, bos, eos, allow_special) for t in part]

        with ThreadPoolExecutor(threads) as pool:
            return [ids for part in pool.map(encode_slice, slices) for ids in part]

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """int32 [vocab_size]: UTF-8 bytes of text each token decodes to (0 for special tokens)."""
        return self._token_bytes()

    def token_id(self, name: str) -> int | None:
        return self.special_tokens.get(name)

    def encode_dialog(self, messages: list[dict], add_generation_prompt: bool = True):
        """Ids and loss mask (1 on assistant tokens) of an OpenAI-style list of messages."""
        from herd.tokenizer.chat import encode_dialog

        return encode_dialog(self, messages, add_generation_prompt)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "stop_ids": self.stop_ids,
            "chat_format": self.chat_format,
            "special_tokens": len(self.special_tokens),
        }
