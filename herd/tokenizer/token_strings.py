"""The bytes of text each token id stands for, for every herd tokenizer backend.

`Tokenizer.token_bytes` counts these bytes (for bits-per-byte); a grammar engine needs the bytes
themselves, to know which tokens can extend a partial output. Decoding ids one at a time does not
give them: sentencepiece drops the leading space of a lone piece and byte-level decoders turn a
token holding part of a UTF-8 character into U+FFFD. So each backend's vocabulary is read directly:

- Llama 3 (tiktoken): the mergeable ranks are the tokens' bytes;
- Hugging Face `tokenizer.json`: byte-level BPE pieces map back through GPT-2's byte table;
  sentencepiece-style pieces use "▁" for a space and "<0xNN>" for a byte-fallback byte;
- Llama 2 (sentencepiece): the same two conventions, read from the model's pieces.

Special tokens (control tokens, sentencepiece's unknown token) stand for no text: they get b"".
"""

from __future__ import annotations

import re

from herd.tokenizer.base import Tokenizer

SPIECE_SPACE = "\u2581"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_strings(tok: Tokenizer) -> list[bytes]:
    """Bytes of text of each id in [0, tok.vocab_size); b"" for special tokens."""
    from herd.tokenizer.hf import HFTokenizer
    from herd.tokenizer.llama3 import Llama3Tokenizer
    from herd.tokenizer.sentencepiece_model import SentencePieceTokenizer

    special = set(tok.special_tokens.values())
    if isinstance(tok, Llama3Tokenizer):
        decode = tok._enc.decode_single_token_bytes
        return [b"" if i in special else decode(i) for i in range(tok.vocab_size)]
    if isinstance(tok, SentencePieceTokenizer):
        sp = tok._sp
        return [
            b"" if i in special else _spiece_bytes(sp.id_to_piece(i), sp.is_byte(i))
            for i in range(tok.vocab_size)
        ]
    if isinstance(tok, HFTokenizer):
        return _hf_strings(tok, special)
    raise TypeError(f"{tok.path}: no token strings for a {tok.kind} tokenizer")


def _spiece_bytes(piece: str, is_byte: bool) -> bytes:
    match = _BYTE_PIECE.fullmatch(piece)
    if is_byte and match:
        return bytes([int(match.group(1), 16)])
    return piece.replace(SPIECE_SPACE, " ").encode("utf-8")


def _hf_strings(tok, special: set[int]) -> list[bytes]:
    from herd.tokenizer.hf import _byte_decoder

    backend = tok._special
    byte_level = tok._is_byte_level()
    table = _byte_decoder()
    # Added tokens that are not special are stored as plain text, not in the byte alphabet.
    added = {i for i in backend.get_added_tokens_decoder()}
    out = []
    for i in range(tok.vocab_size):
        piece = backend.id_to_token(i)
        if i in special or piece is None:
            out.append(b"")
        elif i in added:
            out.append(piece.encode("utf-8"))
        elif byte_level and all(c in table for c in piece):
            out.append(bytes(table[c] for c in piece))
        else:
            out.append(_spiece_bytes(piece, _BYTE_PIECE.fullmatch(piece) is not None))
    return out
