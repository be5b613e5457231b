"""`herd index build|search` and `herd agent memory list|delete|export` end to end, with their
one-line errors."""

from __future__ import annotations

import json

from herd.agent.memory import MemoryStore
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error


def test_index_build_and_search(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "llamas.txt").write_text("Llamas are domesticated camelids from the Andes.\n")
    (docs / "rows.jsonl").write_text(
        json.dumps({"title": "Kelp", "text": "Kelp forests grow in cold coastal water."}) + "\n"
    )
    out = tmp_path / "index"
    herd_cli("index", "build", docs, "--out", out)
    hits = json.loads(herd_cli_inprocess("index", "search", out, "kelp water", "--json").stdout)
    assert hits["results"][0]["title"] == "Kelp"
    assert "Llamas" in herd_cli_inprocess("index", "search", out, "andes camelids").stdout
    again = herd_cli_inprocess("index", "build", docs, "--out", out, check=False)
    one_line_error(again, "already exists")
    herd_cli_inprocess("index", "build", docs, "--out", out, "--overwrite")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    one_line_error(
        herd_cli_inprocess("index", "build", bad, "--out", tmp_path / "x", check=False),
        "bad.jsonl:1",
    )
    assert not (tmp_path / "x").exists()
    one_line_error(
        herd_cli_inprocess("index", "search", tmp_path / "none", "q", check=False),
        "no such index folder",
    )


def test_memory_list_delete_export(tmp_path):
    db = tmp_path / "agent.db"
    with MemoryStore(db, user="ana") as store:
        first = store.add("I have a black dog named Kelp", "partner")
        store.add("I live in Lima", "partner")
    with MemoryStore(db, user="bo") as store:
        store.add("I play the cello", "partner")
    listed = json.loads(
        herd_cli_inprocess("agent", "memory", "list", "--memory", db, "--json").stdout
    )
    assert [n["user"] for n in listed["notes"]] == ["ana", "ana", "bo"]
    text = herd_cli("agent", "memory", "list", "--memory", db, "--user", "bo").stdout
    assert "I play the cello" in text and "Lima" not in text
    out = tmp_path / "notes.jsonl"
    herd_cli_inprocess("agent", "memory", "export", "--memory", db, "--out", out, "--user", "ana")
    assert len(out.read_text().splitlines()) == 2
    herd_cli_inprocess("agent", "memory", "delete", "--memory", db, str(first))
    proc = herd_cli_inprocess("agent", "memory", "delete", "--memory", db, str(first), check=False)
    one_line_error(proc, f"no note with id {first}")
    with MemoryStore(db, user="ana") as store:
        assert [e.text for e in store.list_entries("ana")] == ["I live in Lima"]
    proc = herd_cli_inprocess(
        "agent", "memory", "list", "--memory", tmp_path / "none.db", check=False
    )
    one_line_error(proc, "no such memory database")
    assert not (tmp_path / "none.db").exists()
