"""BPE training through `tokenizers`, and the HF tokenizer.json backend that reads its output."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herd import HerdError, load_tokenizer
from herd.tokenizer.hf import HFTokenizer
from herd.vocab.bpe import SPECIAL_TOKENS, train_bpe
from tests.tokenizer_corpus import CORPUS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    (root / "a.txt").write_text("\n".join(CORPUS[:20]) * 20, encoding="utf-8")
    (root / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in CORPUS[20:] if "\ud800" not in t),
        encoding="utf-8",
    )
    out = train_bpe([root / "a.txt", root / "b.jsonl"], 600, root / "tok", show_progress=False)
    return load_tokenizer(out)


def test_trained_tokenizer_loads_with_chat_format(trained):
    assert isinstance(trained, HFTokenizer)
    assert trained.vocab_size == 600
    assert trained.chat_format == "llama3"
    assert trained.bos_id == trained.special_tokens["<|begin_of_text|>"]
    assert set(SPECIAL_TOKENS) <= set(trained.special_tokens)
    ids, mask = trained.encode_dialog(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        add_generation_prompt=False,
    )
    assert trained.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "hello<|eot_id|>"


def test_special_text_is_plain_unless_allowed(trained):
    eot = trained.special_tokens["<|eot_id|>"]
    assert eot not in trained.encode("x<|eot_id|>y")
    assert trained.decode(trained.encode("x<|eot_id|>y")) == "x<|eot_id|>y"
    assert eot in trained.encode("x<|eot_id|>y", allow_special=True)
    texts = ["a<|eot_id|>", "b c d"] * 5
    assert trained.encode_batch(texts) == [trained.encode(t) for t in texts]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_byte_level_roundtrip_and_token_bytes(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert int(trained.token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_bad_corpus(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n\xff\xfe broken")
    with pytest.raises(HerdError, match=r"bad.txt: invalid UTF-8 at byte 10"):
        train_bpe([bad], 400, tmp_path / "o", show_progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(HerdError, match="empty"):
        train_bpe([empty], 400, tmp_path / "o", show_progress=False)
    with pytest.raises(HerdError, match="at least 268"):
        train_bpe([bad], 100, tmp_path / "o", show_progress=False)
    assert not (tmp_path / "o").exists()


def test_malformed_tokenizer_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": 3}}')
    with pytest.raises(HerdError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(tmp_path)
