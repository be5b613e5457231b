"""Hugging Face `tokenizer.json` files, through the `tokenizers` library.

Special tokens come from tokenizer_config.json when it sits beside the file (bos_token/eos_token),
else from the conventional names (<s>, </s>, <|begin_of_text|>, <|end_of_text|>, <|eot_id|>).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from herd.errors import HerdError

_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>")
_STOP_NAMES = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "</s>", "<eos>")


class HFTokenizer:
    """encode/decode over a `tokenizers.Tokenizer`, with BOS/EOS and stop-token ids."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as e:
            raise HerdError(f"{self.path}: not a valid tokenizer.json ({e})") from None
        config = self.path.with_name("tokenizer_config.json")
        named = {}
        if config.is_file():
            try:
                data = json.loads(config.read_text())
            except json.JSONDecodeError as e:
                raise HerdError(f"{config}: not valid JSON ({e})") from None
            for key in ("bos_token", "eos_token"):
                value = data.get(key)
                named[key] = value.get("content") if isinstance(value, dict) else value
        self.bos_id = self._lookup(named.get("bos_token"), _BOS_NAMES)
        self.eos_id = self._lookup(named.get("eos_token"), _EOS_NAMES)
        self.stop_ids = sorted(
            {i for i in (self._tok.token_to_id(n) for n in _STOP_NAMES) if i is not None}
            | ({self.eos_id} if self.eos_id is not None else set())
        )

    def _lookup(self, name: str | None, fallbacks: tuple[str, ...]) -> int | None:
        for candidate in (name, *fallbacks):
            if candidate and self._tok.token_to_id(candidate) is not None:
                return self._tok.token_to_id(candidate)
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
