"""`herd data prepare`: shards hold BOS + tokens + EOS per document with exact boundaries, the split
is deterministic, reruns skip finished shards, and bad input fails with the file named."""

from __future__ import annotations

import itertools
import json
import os
import shutil

import pytest

from herd import HerdError, load_tokenizer
from herd.data import shards
from herd.data.shards import TokenShards, prepare
from herd.data.sources import iter_documents, stdlib_files
from herd.vocab.bpe import train_bpe
from tests.tokenizer_corpus import CORPUS


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    (root / "c.txt").write_text("\n".join(CORPUS[:20]) * 5, encoding="utf-8")
    return train_bpe([root / "c.txt"], 400, root / "tok", show_progress=False)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    texts = [t for t in CORPUS if t.strip() and "\ud800" not in t]
    for i, t in enumerate(texts[:20]):
        (root / "sub" / f"doc{i:02d}.txt").write_text(t, encoding="utf-8")
    (root / "more.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in texts[20:]), encoding="utf-8"
    )
    return root, texts


def test_documents_and_boundaries(tmp_path, corpus, tokenizer):
    root, texts = corpus
    prepare(
        [str(root)],
        tokenizer,
        tmp_path / "out",
        val_fraction=0.2,
        shard_chars=300,
        show_progress=False,
    )
    data = TokenShards(tmp_path / "out")
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    docs = {d.id: d.text for d in iter_documents([str(root)])}
    assert len(docs) == len(texts)
    seen = []
    for split in ("train", "val"):
        shards = data.shards(split)
        assert len(shards) >= 1
        for tokens, offsets in shards:
            for a, b in itertools.pairwise(offsets):
                ids = tokens[a:b].tolist()
                assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
                seen.append(tok.decode(ids[1:-1]))
    assert sorted(seen) == sorted(docs.values())
    totals = data.totals("train")
    assert totals["tokens"] == sum(len(t) for t, _ in data.shards("train"))
    assert data.manifest["dtype"] == "uint16"


def test_rerun_skips_and_repairs(tmp_path, corpus, tokenizer):
    root, _ = corpus
    out = tmp_path / "out"
    prepare([str(root)], tokenizer, out, val_fraction=0.2, shard_chars=300, show_progress=False)
    first = json.loads((out / "manifest.json").read_text())
    shard = out / first["splits"]["train"][0]["file"]
    stamp = shard.stat().st_mtime_ns
    prepare([str(root)], tokenizer, out, val_fraction=0.2, shard_chars=300, show_progress=False)
    assert shard.stat().st_mtime_ns == stamp  # skipped, not rewritten
    assert json.loads((out / "manifest.json").read_text())["splits"] == first["splits"]
    shard.write_bytes(b"\0" * 4)  # damaged: checksum no longer matches, so it is redone
    prepare([str(root)], tokenizer, out, val_fraction=0.2, shard_chars=300, show_progress=False)
    assert json.loads((out / "manifest.json").read_text())["splits"] == first["splits"]
    with pytest.raises(HerdError, match="different val_fraction"):
        prepare([str(root)], tokenizer, out, val_fraction=0.5, show_progress=False)


def _files(folder):
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


def test_a_failed_rerun_leaves_the_prepared_folder_as_it_was(tmp_path, corpus, tokenizer):
    root, _ = corpus
    out = tmp_path / "out"
    prepare([str(root)], tokenizer, out, val_fraction=0.2, shard_chars=300, show_progress=False)
    before = _files(out)
    # The corpus changes early on (the first shards come out different and are written), then
    # holds a file that is not UTF-8, read last.
    (root / "more.jsonl").write_text(json.dumps({"text": "changed " * 40}), encoding="utf-8")
    (root / "zz-bad.txt").write_bytes("caf\xe9".encode("latin-1"))
    written = []
    real_flush = shards._ShardWriter.flush

    def flush(self, split, docs):
        entry = real_flush(self, split, docs)
        written.extend(self.written)
        return entry

    with pytest.MonkeyPatch.context() as m:
        m.setattr(shards._ShardWriter, "flush", flush)
        with pytest.raises(HerdError, match=r"zz-bad.txt: invalid UTF-8"):
            prepare(
                [str(root)], tokenizer, out, val_fraction=0.2, shard_chars=300, show_progress=False
            )
    assert written  # new shards were written before the bad file was reached
    assert _files(out) == before  # manifest, shards and tokenizer exactly as they were
    TokenShards(out).shards("train")  # and they still read
    # A folder no manifest describes gets its tokenizer/ replaced, whatever it held.
    other = tmp_path / "other"
    (other / "tokenizer").mkdir(parents=True)
    (other / "tokenizer" / "tokenizer.json").write_text("{}")
    prepare([str(root / "sub")], tokenizer, other, show_progress=False)
    assert TokenShards(other).tokenizer().vocab_size == load_tokenizer(tokenizer).vocab_size
    # A folder the failed run created is not left behind (no half-made tokenizer/).
    with pytest.raises(HerdError, match=r"zz-bad.txt"):
        prepare([str(root)], tokenizer, tmp_path / "new", show_progress=False)
    assert not (tmp_path / "new").exists()
    # Once the corpus is fixed, the rerun replaces the changed shards and drops the old ones.
    (root / "zz-bad.txt").unlink()
    prepare([str(root)], tokenizer, out, val_fraction=0.2, shard_chars=300, show_progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    named = {
        s[k] for split in manifest["splits"].values() for s in split for k in ("file", "index")
    }
    on_disk = {f.name for f in out.iterdir() if f.suffix in (".bin", ".npy")}
    assert on_disk == named


def test_split_is_deterministic(tmp_path, corpus, tokenizer):
    root, _ = corpus
    a = prepare([str(root)], tokenizer, tmp_path / "a", val_fraction=0.3, show_progress=False)
    b = prepare([str(root)], tokenizer, tmp_path / "b", val_fraction=0.3, show_progress=False)
    ma, mb = (json.loads(p.read_text()) for p in (a, b))
    assert ma["totals"] == mb["totals"] and ma["totals"]["val"]["documents"] > 0
    # the same corpus stored elsewhere (and named by a relative path) splits the same way
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    c = prepare(
        [os.path.relpath(moved)], tokenizer, tmp_path / "c", val_fraction=0.3, show_progress=False
    )
    mc = json.loads(c.read_text())
    assert mc["totals"] == ma["totals"]
    for split in ("train", "val"):
        for sa, sc in zip(ma["splits"][split], mc["splits"][split], strict=True):
            assert (tmp_path / "a" / sa["file"]).read_bytes() == (
                tmp_path / "c" / sc["file"]
            ).read_bytes()


def test_parquet_source(tmp_path, tokenizer):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha beta", "gamma"], "n": [1, 2]}), tmp_path / "d.parquet")
    prepare(
        [str(tmp_path / "d.parquet")],
        tokenizer,
        tmp_path / "out",
        val_fraction=0.0,
        show_progress=False,
    )
    assert TokenShards(tmp_path / "out").totals("train")["documents"] == 2


def test_bad_input(tmp_path, tokenizer):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ok.txt").write_text("fine text", encoding="utf-8")
    (bad / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(HerdError, match=r"latin1.txt: invalid UTF-8 at byte 3"):
        prepare([str(bad)], tokenizer, tmp_path / "o1", show_progress=False)
    prepare(
        [str(bad)],
        tokenizer,
        tmp_path / "o2",
        val_fraction=0.0,
        on_bad_file="skip",
        show_progress=False,
    )
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["totals"]["train"]["documents"] == 1
    assert "latin1.txt" in manifest["skipped_files"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "e.txt").write_text("   ")
    with pytest.raises(HerdError, match="no documents"):
        prepare([str(empty)], tokenizer, tmp_path / "o3", show_progress=False)
    with pytest.raises(HerdError, match="no such file"):
        prepare(["./missing"], tokenizer, tmp_path / "o4", show_progress=False)


def test_stdlib_corpus_is_the_library_without_tests():
    files = stdlib_files()
    names = {f.name for f in files}
    assert {"os.py", "__init__.py", "tokenize.py"} <= names
    assert not any("site-packages" in f.parts or "test" in f.parts for f in files)


def test_hugging_face_dataset_source_streams_offline(tmp_path, tokenizer, monkeypatch):
    # A source that is not a path is a Hugging Face dataset, read with
    # datasets.load_dataset(name, split="train", streaming=True). Offline, a dataset in the Hub's
    # layout in a local folder streams through that same call; herd sends local folders to its
    # file reader, so the test makes this one's name resolve as a dataset's.
    pytest.importorskip("datasets")
    import herd.data.sources as sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    repo = tmp_path / "org" / "tiny"
    (repo / "data").mkdir(parents=True)
    rows = [{"text": "alpha beta"}, {"title": "no text field"}, {"text": "gamma delta"}]
    (repo / "data" / "train-00000-of-00001.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows), encoding="utf-8"
    )
    real = sources.source_files
    monkeypatch.setattr(sources, "source_files", lambda s: None if s == str(repo) else real(s))
    docs = list(iter_documents([str(repo)]))
    assert [(d.id, d.text) for d in docs] == [
        (f"{repo}:0", "alpha beta"),
        (f"{repo}:2", "gamma delta"),  # rows without the text field are skipped, ids keep rows
    ]
    prepare([str(repo)], tokenizer, tmp_path / "out", val_fraction=0.0, show_progress=False)
    assert TokenShards(tmp_path / "out").totals("train")["documents"] == 2
    with pytest.raises(
        HerdError, match="dataset 'no-such-org/no-such-dataset': cannot be streamed"
    ):
        list(iter_documents(["no-such-org/no-such-dataset"]))
