"""herd/agent/search.py: BM25 indexes built from text, JSONL and Parquet and checked against
bm25s computed directly on the same corpus; atomic folders; one-line errors; the HTTP backend
against a real local server; the index of Python's own documentation, built for real."""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bm25s
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from herd.agent import search as S
from herd.errors import HerdError

# --- building and searching -------------------------------------------------------------------


def _one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(HerdError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_chunk_packs_paragraphs_and_overlaps_long_ones():
    assert S.chunk("one two\n\nthree", 200) == ["one two\n\nthree"]
    assert S.chunk("a b c\n\nd e f", 4) == ["a b c", "d e f"]
    words = [f"w{i}" for i in range(45)]
    parts = S.chunk("first line\n" + " ".join(words), 20)
    assert all(len(p.split()) <= 20 for p in parts)
    assert parts[0].startswith("first line\n")  # the original's line breaks are kept
    seen = [w for p in parts for w in p.split()]
    assert set(seen) == {"first", "line", *words} and len(seen) > 47  # windows overlap
    assert S.chunk(" \n\n \n", 10) == []


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "llamas.txt").write_text(
        "Llamas live in the Andes.\n\nThey hum to each other and spit when annoyed."
    )
    (folder / "sub" / "notes.md").write_text("The zygomorphic flower of the orchid.")
    (folder / ".hidden.txt").write_text("never indexed")
    (folder / "ignored.csv").write_text("not a supported file")
    rows = [
        {"title": "Alpacas", "text": "Alpacas are smaller than llamas.", "url": "http://a/1"},
        {"text": "Vicunas give the finest wool."},
        {"title": "Empty", "text": None},
    ]
    (folder / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    table = pa.table({"text": ["Guanacos are wild.", "Camels have humps."], "title": ["G", None]})
    pq.write_table(table, folder / "rows.parquet")
    return folder


def test_build_reads_text_jsonl_parquet_and_folders(docs, tmp_path):
    out = S.build_index([str(docs)], tmp_path / "index", show_progress=False)
    manifest = json.loads((out / "index.json").read_text())
    assert manifest["format"] == "herd-search-index" and manifest["version"] == 1
    assert manifest["documents"] == 6 and manifest["passages"] == 6  # the null row is skipped
    assert manifest["tokenizer"]["stopwords"] == S.STOPWORDS and "for" not in S.STOPWORDS
    rows = [json.loads(line) for line in (out / "passages.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(6))
    sources = {r["text"].split()[0]: (r["title"], r["source"]) for r in rows}
    assert sources["Alpacas"] == ("Alpacas", "http://a/1")
    assert sources["Vicunas"] == ("rows", f"{docs / 'rows.jsonl'}:2")
    assert sources["Guanacos"] == ("G", f"{docs / 'rows.parquet'}#row=0")
    assert sources["Camels"] == ("rows", f"{docs / 'rows.parquet'}#row=1")
    assert sources["Llamas"] == ("llamas", str(docs / "llamas.txt"))
    assert "never indexed" not in (out / "passages.jsonl").read_text()

    index = S.SearchIndex.load(out)
    assert len(index) == 6
    hits = index.search("zygomorphic orchid", k=3)
    assert hits[0]["title"] == "notes" and hits[0]["text"].startswith("The zygomorphic")
    assert set(hits[0]) == {"title", "text", "source", "score"} and hits[0]["score"] > 0
    assert len(hits) == 1  # only passages sharing a word
    assert index.search("the of which", k=3) == [] and index.search("unheardofword") == []
    assert index.search("wild guanacos", k=10)[0]["title"] == "G"
    _one_line_error("k must be at least 1", index.search, "llamas", k=0)


def _corpus(n: int, seed: int = 0) -> list[dict]:
    """Random texts over a small vocabulary (so scores tie rarely but words repeat)."""
    rng = random.Random(seed)
    vocab = [f"term{i}" for i in range(60)] + ["the", "of", "and"]
    return [
        {"title": f"doc {i} {rng.choice(['red', 'green', 'blue'])}",
         "text": " ".join(rng.choices(vocab, k=rng.randint(5, 40)))}
        for i in range(n)
    ]  # fmt: skip


def _reference(texts: list[str]) -> bm25s.BM25:
    model = bm25s.BM25()
    model.index(bm25s.tokenize(texts, stopwords=S.STOPWORDS, show_progress=False), False)
    return model


def test_search_equals_bm25s_on_the_same_corpus(tmp_path):
    rows = _corpus(80)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = S.SearchIndex.load(
        S.build_index([str(tmp_path / "c.jsonl")], tmp_path / "i", show_progress=False)
    )
    body = _reference([r["text"] for r in rows])
    titles = _reference([r["title"] for r in rows])
    for query in ["term1 term7", "term3 term3 term50 the", "term59 term0 term22 term41"]:
        # Titles share no word with these queries: bm25s's own retrieve is the whole reference.
        words = bm25s.tokenize([query], stopwords=S.STOPWORDS, show_progress=False)
        ids, scores = body.retrieve(words, k=5, show_progress=False)
        hits = index.search(query, k=5)
        np.testing.assert_allclose([h["score"] for h in hits], scores[0], rtol=1e-6)
        # bm25s orders ties arbitrarily, herd by passage: compare as (score, id) pairs.
        expected = sorted(
            zip(scores[0].tolist(), ids[0].tolist(), strict=True), key=lambda p: (-p[0], p[1])
        )
        assert [int(h["title"].split()[1]) for h in hits] == [i for _, i in expected]
    for query in ["red term5", "blue green term12 term30"]:
        words = bm25s.tokenize([query], stopwords=S.STOPWORDS, return_ids=False)[0]
        expected = body.get_scores(words) + 0.5 * titles.get_scores(words)
        np.testing.assert_allclose(index.scores(query), expected, rtol=1e-6)
        order = sorted(range(len(rows)), key=lambda i: (-expected[i], i))[:5]
        assert [int(h["title"].split()[1]) for h in index.search(query, 5)] == order


# --- atomic folders and errors ----------------------------------------------------------------


def test_a_failed_build_leaves_no_folder_and_keeps_the_earlier_index(docs, tmp_path, monkeypatch):
    out = S.build_index([str(docs)], tmp_path / "index", show_progress=False)
    before = S.SearchIndex.load(out).search("llamas", k=3)
    _one_line_error("already exists", S.build_index, [str(docs)], out, show_progress=False)

    def full_disk(self, save_dir, **kwargs):
        Path(save_dir).mkdir(parents=True)
        (Path(save_dir) / "data.csc.index.npy").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bm25s.BM25, "save", full_disk)
    for target in (out, tmp_path / "fresh"):
        with pytest.raises(OSError, match="No space"):
            S.build_index([str(docs)], target, show_progress=False, overwrite=True)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "index"]  # no temporaries
    monkeypatch.undo()
    assert S.SearchIndex.load(out).search("llamas", k=3) == before


def test_rebuild_inside_the_documents_folder_skips_the_index(docs):
    first = S.build_index([str(docs)], docs / "index", show_progress=False)
    count = json.loads((first / "index.json").read_text())["passages"]
    S.build_index([str(docs)], docs / "index", show_progress=False, overwrite=True)
    assert json.loads((first / "index.json").read_text())["passages"] == count


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', r"bad\.jsonl:2: not JSON"),
        ("list.jsonl", "[1, 2]\n", r"list\.jsonl:1: expected a JSON object, got list"),
        ("notext.jsonl", '{"body": "x"}\n', r'notext\.jsonl:1: no "text" field'),
        ("number.jsonl", '{"text": 3}\n', r'number\.jsonl:1: "text" is int, expected a string'),
        ("latin.txt", b"caf\xe9", r"latin\.txt: not UTF-8 text \(byte 3\)"),
        ("fake.parquet", b"not parquet", r"fake\.parquet: not a Parquet file"),
        ("doc.pdf", b"%PDF", r"doc\.pdf: not a \.txt/\.md/\.rst, \.jsonl or \.parquet file"),
        ("blank.txt", "   \n\n", r"blank\.txt: no documents with text"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _one_line_error(match, S.build_index, [str(path)], tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_more_bad_inputs(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    _one_line_error(r't\.parquet: no "text" column \(columns: body\)', S.build_index,
                    [str(tmp_path / "t.parquet")], tmp_path / "o", show_progress=False)  # fmt: skip
    _one_line_error("missing: no such file or folder", S.build_index,
                    [str(tmp_path / "missing")], tmp_path / "o", show_progress=False)  # fmt: skip
    (tmp_path / "empty").mkdir()
    _one_line_error("empty: no documents", S.build_index, [str(tmp_path / "empty")],
                    tmp_path / "o", show_progress=False)  # fmt: skip
    _one_line_error("empty: not a search index", S.SearchIndex.load, tmp_path / "empty")
    (tmp_path / "empty" / "index.json").write_text('{"format": "herd-search-index", "version": 9}')
    _one_line_error(r"index\.json: version 9", S.SearchIndex.load, tmp_path / "empty")
    (tmp_path / "empty" / "index.json").write_text('{"format": "herd-search-index", "version": 1}')
    _one_line_error("empty: damaged search index", S.SearchIndex.load, tmp_path / "empty")
    _one_line_error("nowhere: no such index folder", S.open_backend, str(tmp_path / "nowhere"))


# --- the HTTP backend -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        self.server.queries.append(parse_qs(url.query))
        route = url.path
        if route == "/slow":
            time.sleep(1.0)
        if route == "/error":
            self.send_error(500, "Broken")
            return
        body = {
            "/list": json.dumps([
                {"title": "A", "url": "http://a", "snippet": "alpha", "score": 2},
                {"url": "http://b", "content": "beta"},
                {"title": "no text at all"},
                {"title": "C", "text": "gamma"},
            ]),
            "/wrapped": json.dumps({"results": [{"text": "delta", "title": "D"}]}),
            "/shape": json.dumps({"answer": 42}),
        }.get(route, "<html>not json</html>")  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads, httpd.block_on_close, httpd.queries = True, False, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_backend_maps_results(server):
    httpd, base = server
    hits = S.HTTPSearch(base + "/list").search("llama wool & more", k=2)
    assert httpd.queries[-1] == {"q": ["llama wool & more"], "n": ["2"]}
    assert hits == [
        {"title": "A", "text": "alpha", "source": "http://a", "score": 2.0},
        {"title": "http://b", "text": "beta", "source": "http://b", "score": None},
    ]
    assert len(S.HTTPSearch(base + "/list").search("x", k=10)) == 3  # no text: dropped
    hits = S.HTTPSearch(base + "/wrapped?key=secret").search("d", k=5)
    assert httpd.queries[-1] == {"key": ["secret"], "q": ["d"], "n": ["5"]}
    assert hits == [{"title": "D", "text": "delta", "source": base + "/wrapped?key=secret",
                     "score": None}]  # fmt: skip
    assert isinstance(S.open_backend(base + "/list"), S.HTTPSearch)


def test_http_backend_errors(server):
    _, base = server
    _one_line_error(r"/error: HTTP 500 Broken", S.HTTPSearch(base + "/error").search, "q")
    _one_line_error(r"/bad: answer is not JSON", S.HTTPSearch(base + "/bad").search, "q")
    _one_line_error(r'/shape: expected a JSON list of objects or \{"results"',
                    S.HTTPSearch(base + "/shape").search, "q")  # fmt: skip
    _one_line_error(r"/slow: no answer within 0.2 s",
                    S.HTTPSearch(base + "/slow", timeout=0.2).search, "q")  # fmt: skip
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _one_line_error("request failed", S.HTTPSearch(f"http://127.0.0.1:{port}").search, "q")


# --- Python's own documentation ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory):
    """The full index, as `herd agent` builds it on first use (about a second and a half)."""
    before = set(sys.modules)
    start = time.perf_counter()
    path = S.stdlib_index(tmp_path_factory.mktemp("cache"), show_progress=False)
    return path, time.perf_counter() - start, set(sys.modules) - before


def test_stdlib_index_answers_questions_about_python(stdlib):
    path, _, imported = stdlib
    assert path.name == f"stdlib-index-{sys.version.split()[0]}"
    assert "imaplib" not in imported and "tkinter" not in imported  # walked in a child process
    index = S.SearchIndex.load(path)
    assert len(index) > 3000
    hits = index.search("how does a for statement work", k=5)
    assert hits[0]["title"] == 'The "for" statement' and hits[0]["source"] == "pydoc topic for"
    hits = index.search("json.dumps indent", k=3)
    dumps = [h for h in hits if h["title"] == "json.dumps"]
    assert dumps and "indent" in dumps[0]["text"] and dumps[0]["source"] == "pydoc json.dumps"
    assert index.search("sort a list in place", k=1)[0]["title"] == "builtins.list.sort"


def test_stdlib_index_is_cached_and_env_overridable(stdlib, monkeypatch):
    path, _, _ = stdlib
    monkeypatch.setenv("HERD_CACHE", str(path.parent))
    start = time.perf_counter()
    backend = S.open_backend(None, show_progress=False)
    assert backend.path == path and time.perf_counter() - start < 0.5
    assert S.open_backend("stdlib").path == path


def test_stdlib_walk_never_runs_code_from_the_working_folder(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "colorsys.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    path = S.stdlib_index(tmp_path / "cache", modules=["colorsys"], show_progress=False)
    assert not marker.exists()
    assert path.name.startswith(f"stdlib-index-{sys.version.split()[0]}-")  # a subset: own name
    hits = S.SearchIndex.load(path).search("conversion between rgb and other color systems")
    assert hits[0]["source"] == "pydoc colorsys"  # the real module's docstring
    manifest = json.loads((path / "index.json").read_text())
    assert manifest["modules"] == ["colorsys"] and manifest["sources"][0].startswith("python-")
