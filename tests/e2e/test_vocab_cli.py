"""`herd vocab build` / `compare` end to end on the generated 12-language corpus: the clusters are
the language families, and at equal size the XLM-V vocabulary beats the joint baseline on every
low-resource language in ALP and tokens per sentence; bad input fails with one line. Also the
gettext reader of experiments/xlmv_real_text.py on a catalog written here."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

import herd
from herd.data.shards import TokenShards, prepare
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error
from tests.multilingual_corpus import LANGUAGES, LOW_RESOURCE, write_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    corpus = write_corpus(root / "corpus", chars_per_unit=30_000)
    common = ["--size", "9000", "--threads", "2"]
    herd_cli(
        "vocab",
        "build",
        corpus,
        "--clusters",
        "7",
        "--per-language-size",
        "2000",
        "--out",
        root / "xlmv",
        *common,
    )
    herd_cli("vocab", "build", corpus, "--baseline", "joint", "--out", root / "joint", *common)
    return root, corpus


def test_clusters_are_the_language_families(built):
    root, _ = built
    clusters = json.loads((root / "xlmv" / "clusters.json").read_text())
    found = sorted(sorted(c["languages"]) for c in clusters)
    families: dict[str, list[str]] = {}
    for lang, (family, _, _) in LANGUAGES.items():
        families.setdefault(family, []).append(lang)
    assert found == sorted(sorted(v) for v in families.values())
    report = json.loads((root / "xlmv" / "report.json").read_text())
    assert report["size_reached"] == 9000 and (root / "xlmv" / "languages.png").is_file()
    assert report["kmeans"]["restarts"] == 256 and report["kmeans"]["inertia"] > 0


def test_xlmv_beats_joint_on_low_resource_languages(built):
    root, corpus = built
    out = root / "cmp"
    proc = herd_cli("vocab", "compare", corpus, root / "xlmv", root / "joint", "--out", out)
    assert "ALP" in proc.stdout and (out / "comparison.png").stat().st_size > 10_000
    table = json.loads((out / "comparison.json").read_text())
    x, j = table["xlmv"], table["joint"]
    for lang in LOW_RESOURCE:
        assert x[lang]["held_out"]
        assert x[lang]["alp"] > j[lang]["alp"], lang
        assert x[lang]["tokens_per_sentence"] < j[lang]["tokens_per_sentence"], lang
    sizes = [herd.load_tokenizer(root / name).vocab_size for name in ("xlmv", "joint")]
    assert sizes == [9000, 9000]  # compared at equal size


def test_built_vocabulary_feeds_data_prepare(built, tmp_path):
    root, corpus = built
    prepare(
        [str(corpus / "ell_Grek.txt")],
        root / "xlmv",
        tmp_path / "shards",
        val_fraction=0.0,
        show_progress=False,
    )
    shards = TokenShards(tmp_path / "shards")
    tok = shards.tokenizer()
    text = (corpus / "ell_Grek.txt").read_text("utf-8").splitlines()[0]
    assert tok.decode(tok.encode(text)) == text


def test_bad_input(tmp_path, built):
    _, corpus = built
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "eng_Latn.txt").write_text("some text\n")
    (empty / "fra_Latn.txt").write_text("\n\n")
    one_line_error(
        herd_cli_inprocess(
            "vocab", "build", empty, "--size", "1000", "--out", tmp_path / "o", check=False
        ),
        "fra_Latn.txt: empty language file",
    )
    latin1 = tmp_path / "latin1"
    latin1.mkdir()
    (latin1 / "deu_Latn.txt").write_bytes("Grüße aus Köln\n".encode("latin-1"))
    one_line_error(
        herd_cli_inprocess(
            "vocab", "build", latin1, "--size", "1000", "--out", tmp_path / "o", check=False
        ),
        "deu_Latn.txt: not UTF-8",
    )
    small = tmp_path / "small"
    small.mkdir()
    (small / "eng_Latn.txt").write_text("a tiny corpus\nwith two lines\n" * 3)
    proc = herd_cli_inprocess(
        "vocab",
        "build",
        small,
        "--size",
        "5000",
        "--clusters",
        "1",
        "--per-language-size",
        "300",
        "--out",
        tmp_path / "o",
        check=False,
    )
    one_line_error(proc, "supports", "fewer than --size 5000")
    assert not (tmp_path / "o").exists()  # nothing half-written
    proc = herd_cli_inprocess(
        "vocab",
        "build",
        small,
        "--size",
        "5000",
        "--clusters",
        "1",
        "--per-language-size",
        "300",
        "--out",
        tmp_path / "o",
        "--allow-smaller",
    )
    assert "warning" in proc.stderr and (tmp_path / "o" / "tokenizer.model").is_file()
    one_line_error(
        herd_cli_inprocess(
            "vocab",
            "build",
            corpus,
            "--size",
            "9000",
            "--clusters",
            "99",
            "--out",
            tmp_path / "p",
            check=False,
        ),
        "--clusters 99: expected 1..12",
    )
    one_line_error(
        herd_cli_inprocess(
            "vocab",
            "build",
            corpus,
            "--size",
            "9000",
            "--kmeans-restarts",
            "0",
            "--out",
            tmp_path / "p",
            check=False,
        ),
        "--kmeans-restarts 0: expected at least 1",
    )


def test_jsonl_corpus_matches_the_folder(tmp_path, built):
    _, corpus = built
    from herd.vocab.corpus import load_corpus

    rows = []
    for lang in ("ell_Grek", "krb_Latn"):
        text = (corpus / f"{lang}.txt").read_text("utf-8")
        rows.append(json.dumps({"language": lang, "text": text}, ensure_ascii=False))
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(rows) + "\n", "utf-8")
    from_jsonl = load_corpus(path)
    from_folder = load_corpus(corpus)
    assert list(from_jsonl) == ["ell_Grek", "krb_Latn"]
    for lang in from_jsonl:
        assert from_jsonl[lang].train == from_folder[lang].train
        assert from_jsonl[lang].held_out == from_folder[lang].held_out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"language": "x"}\n')
    # a real `python -m herd` process: its own exit code 2 and one stderr line
    one_line_error(
        herd_cli("vocab", "build", bad, "--size", "1000", "--out", tmp_path / "o", check=False),
        "bad.jsonl:1: expected a JSON object with 'language'",
    )


def _mo(messages: list[tuple[bytes, bytes]]) -> bytes:
    """A little-endian gettext catalog (no hash table), messages sorted as msgfmt sorts them."""
    messages = sorted(messages)
    n, ids_at = len(messages), 28
    strs_at = ids_at + 8 * n
    data_at = strs_at + 8 * n
    table, blob = [b"", b""], b""
    for which in (0, 1):
        for message in messages:
            table[which] += struct.pack("<2I", len(message[which]), data_at + len(blob))
            blob += message[which] + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, data_at)
    return head + table[0] + table[1] + blob


def test_real_text_experiment_reads_gettext_catalogs(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
    import xlmv_real_text

    catalog = _mo(
        [
            (b"", b"Content-Type: text/plain; charset=ISO-8859-7\n"),
            (b"Open", "Άνοιγμα".encode("iso-8859-7")),
            (b"%d file\0%d files", "%d αρχείο\0%d αρχεία".encode("iso-8859-7")),
            (b"menu\x04Quit", "Έξοδος\nτώρα".encode("iso-8859-7")),
            (b"GNOME", b"GNOME"),  # untranslated: left out
            (b"42", b"42"),
        ]
    )
    folder = tmp_path / "locale" / "el" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "app.mo").write_bytes(catalog)
    (folder / "iso_639.mo").write_bytes(catalog.replace("Άνοιγμα".encode("iso-8859-7"), b"Xxxxxxx"))
    pairs = xlmv_real_text.read_mo(folder / "app.mo")
    assert ("Open", "Άνοιγμα") in pairs and ("Quit", "Έξοδος\nτώρα") in pairs
    assert ("%d file", "%d αρχεία") in pairs  # every plural form
    lines = xlmv_real_text.language_lines(tmp_path / "locale", "el")
    assert lines == sorted(["%d αρχείο", "%d αρχεία", "Άνοιγμα", "Έξοδος", "τώρα"])
