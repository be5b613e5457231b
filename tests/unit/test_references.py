"""tests/references.py: reference files are found inside the repository or a dev dependency, and a
missing or altered one fails the test that needs it (an error, never a skip)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests import references

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("find", [references.llama2_tokenizer, references.llama3_tokenizer])
def test_references_are_present_and_verified(find):
    path = find()
    assert path.is_file()
    assert ROOT in path.parents or "site-packages" in path.parts
    expected = {references.LLAMA2_SHA256, references.LLAMA3_SHA256}
    assert hashlib.sha256(path.read_bytes()).hexdigest() in expected


def test_llama2_licence_travels_with_it():
    data = references.DATA
    assert (data / "LICENSE-llama2").read_text().startswith("LLAMA 2 COMMUNITY LICENSE AGREEMENT")
    notice = "Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c) Meta Platforms"
    assert notice in (data / "NOTICE").read_text()


def test_missing_reference_raises_an_error_not_a_skip(tmp_path):
    with pytest.raises(references.ReferenceFileError, match="missing: do this") as e:
        references.verified(tmp_path / "absent.model", references.LLAMA2_SHA256, "do this")
    # pytest's skip is an OutcomeException (a BaseException); this is an ordinary error.
    assert not isinstance(e.value, pytest.skip.Exception)


def test_altered_reference_raises(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"not the tokenizer")
    digest = hashlib.sha256(b"not the tokenizer").hexdigest()
    with pytest.raises(references.ReferenceFileError, match=f"sha256 {digest}, expected"):
        references.verified(path, references.LLAMA2_SHA256, "restore it")


def test_llama3_reference_without_llama_models_raises(monkeypatch):
    monkeypatch.setattr(references.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(references.ReferenceFileError, match="llama-models package"):
        references.llama3_tokenizer_location()


def test_no_test_or_benchmark_looks_outside_the_repository():
    """The old lookups (a shared folder beside the checkout, skipped when absent) are gone."""
    outside = re.compile(r"\.\./shared|SHARED_DATA|parents\[2\]\s*/\s*\"shared\"")
    offenders = [
        str(f.relative_to(ROOT))
        for folder in ("tests", "bench")
        for f in (ROOT / folder).rglob("*.py")
        if f != Path(__file__).resolve() and outside.search(f.read_text(encoding="utf-8"))
    ]
    assert offenders == []
