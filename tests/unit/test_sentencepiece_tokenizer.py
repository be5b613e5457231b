"""Llama 2 tokenizer: ids identical to sentencepiece used directly, with Meta's BOS/EOS rules."""

from __future__ import annotations

import pytest

from herd import load_tokenizer
from herd.tokenizer.sentencepiece_model import SentencePieceTokenizer
from tests import references
from tests.tokenizer_corpus import CORPUS

sentencepiece = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def path():
    return references.llama2_tokenizer()


@pytest.fixture(scope="module")
def tok(path):
    t = load_tokenizer(path)
    assert isinstance(t, SentencePieceTokenizer)
    return t


@pytest.fixture(scope="module")
def sp(path):
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


@pytest.mark.parametrize("text", CORPUS)
def test_ids_match_sentencepiece(tok, sp, text):
    # Meta's Llama 2 Tokenizer.encode: sp.encode(s), then [bos] + t and t + [eos] on request.
    # sentencepiece rejects lone surrogates; herd first replaces them with U+FFFD, as tiktoken does.
    valid = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert tok.encode(text) == sp.encode(valid)
    assert tok.encode(text, bos=True, eos=True) == [1, *sp.encode(valid), 2]


def test_specials_and_batch(tok, sp):
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.stop_ids) == (32000, 1, 2, [2])
    assert tok.chat_format == "llama2"
    assert tok.encode("<s>[INST]</s>") == sp.encode("<s>[INST]</s>")  # text, never control ids
    assert 1 not in tok.encode("<s>") and 2 not in tok.encode("</s>")
    texts = [t for t in CORPUS if t]
    assert tok.encode_batch(texts, bos=True) == [tok.encode(t, bos=True) for t in texts]


def test_token_bytes(tok):
    text = "Hello world, naïve café"
    ids = tok.encode(text)
    # sentencepiece adds a dummy-prefix space, which decoding removes again
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8")) + 1
    assert tok.token_bytes[tok.bos_id] == 0 and tok.token_bytes[3] == 1  # <0x00> byte piece
