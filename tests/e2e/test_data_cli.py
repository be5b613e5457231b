"""`herd data prepare` as a user runs it: the embedded stdlib corpus, and one-line errors."""

from __future__ import annotations

import json

import pytest

from tests import references
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error


@pytest.fixture(scope="module")
def llama3_path():
    return references.llama3_tokenizer()


def test_prepare_stdlib(tmp_path, llama3_path):
    out = herd_cli(
        "data", "prepare", "stdlib", "--tokenizer", llama3_path, "--out", tmp_path / "d", "--json"
    )
    totals = json.loads(out.stdout)
    assert totals["train"]["documents"] > 100 and totals["val"]["documents"] > 0
    assert totals["train"]["bytes"] > 3 * totals["train"]["tokens"]  # ~4 bytes/token on code
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["vocab_size"] == 128256


def test_prepare_errors(tmp_path, llama3_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff")
    one_line_error(
        herd_cli_inprocess(
            "data",
            "prepare",
            tmp_path / "bad.txt",
            "--tokenizer",
            llama3_path,
            "--out",
            tmp_path / "o",
            check=False,
        ),
        "bad.txt: invalid UTF-8",
    )
    # a real `python -m herd` process: its own exit code 2 and one stderr line
    one_line_error(
        herd_cli(
            "data",
            "prepare",
            tmp_path / "nope",
            "--tokenizer",
            llama3_path,
            "--out",
            tmp_path / "o",
            check=False,
        ),
        "no such file",
    )
