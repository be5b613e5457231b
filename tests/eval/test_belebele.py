"""Belebele data loading, prompts, few-shot sampling and the `herd eval` command end to end."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import herd
from herd import HerdError
from herd.data.shards import prepare
from herd.eval.mc_data import load_items
from herd.eval.multiple_choice import (
    belebele_prompt,
    fewshot_examples,
    full_prompt,
    summarise,
    wilson_interval,
)
from herd.eval.perplexity import perplexity
from tests.e2e.cli_runner import herd_cli, one_line_error
from tests.eval.fixtures import PASSAGES, belebele_rows, tiny_checkpoint, write_belebele


@pytest.fixture(scope="module")
def bele(tmp_path_factory):
    return write_belebele(tmp_path_factory.mktemp("belebele"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def test_folder_file_parquet_and_language_selection(bele, tmp_path):
    data = load_items(bele)
    assert data.languages() == sorted(PASSAGES) and not data.problems
    assert len(data.items) == sum(len(qs) for ps in PASSAGES.values() for _, qs in ps)
    one = load_items(bele / "fra_Latn.jsonl")
    assert one.languages() == ["fra_Latn"] and {i.answer for i in one.items} == {1, 2, 3}
    rows = belebele_rows("rus_Cyrl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rus_Cyrl.parquet")
    assert len(load_items(tmp_path).items) == len(rows)
    picked = load_items(bele, languages=["eng_Latn", "zho_Hans"], limit=2)
    assert [i.language for i in picked.items] == ["eng_Latn", "eng_Latn", "zho_Hans", "zho_Hans"]
    with pytest.raises(HerdError, match="no items for language 'deu_Latn'"):
        load_items(bele, languages=["deu_Latn"])


def test_prompt_is_lm_evals_template(bele):
    item = load_items(bele / "eng_Latn.jsonl").items[0]
    assert belebele_prompt(item, "letter") == (
        "P: The river floods every spring, so the village keeps its boats on the hill.\n"
        "Q: When does the river flood?\nA: In spring\nB: In winter\nC: Never\nD: At night\n"
        "Answer:"
    )
    assert belebele_prompt(item, "answer").endswith("Q: When does the river flood?\nAnswer:")


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    rows = belebele_rows("eng_Latn")
    rows[1]["correct_answer_num"] = "5"
    del rows[2]["question"]
    lines = [json.dumps(r) for r in rows[:3]] + ["{not json"]
    path = tmp_path / "eng_Latn.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = load_items(path)
    assert len(data.items) == 1
    assert data.problems == [
        f"{path}:2: correct_answer_num is '5', expected 1-4",
        f"{path}:3: missing field 'question'",
        f"{path}:4: not valid JSON (Expecting property name enclosed in double quotes)",
    ]
    with pytest.raises(HerdError, match=rf"{path}:2: correct_answer_num is '5'"):
        load_items(path, strict=True)


def test_fewshot_never_uses_the_item_or_its_passage(bele):
    data = load_items(bele)
    for item in data.items:
        shots = fewshot_examples(item, data.items, 5)
        assert shots == fewshot_examples(item, data.items, 5)  # deterministic
        for ex in shots:
            assert ex.uid != item.uid and ex.language == item.language
            assert ex.fields["link"] != item.fields["link"]
            assert ex.fields["flores_passage"] != item.fields["flores_passage"]
        prompt = full_prompt(item, data.items, "belebele", "letter", 1)
        assert prompt.count("\n\nP: ") == len(shots[:1]) and prompt.endswith("Answer:")


def test_wilson_interval_and_summary():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(45, 100)
    assert (low, high) == pytest.approx((0.3561, 0.5475), abs=1e-4)


def test_herd_eval_belebele_end_to_end(bele, checkpoint, tmp_path):
    out = tmp_path / "res.json"
    proc = herd_cli(
        "eval",
        checkpoint,
        "--task",
        "belebele",
        "--data",
        bele,
        "--out",
        out,
        "--device",
        "cpu",
        "--shots",
        "1",
    )
    assert "macro average" in proc.stdout
    record = json.loads(out.read_text())
    assert set(record["languages"]) == set(PASSAGES)
    assert len(record["results"]) == record["items"] == 16
    first = record["results"][0]
    assert len(first["logprobs"]) == 4 and first["choice"] == max(
        range(4), key=lambda k: first["scores"][k]
    )
    assert (tmp_path / "res.png").stat().st_size > 10_000
    answer = herd_cli(
        "eval",
        checkpoint,
        "--task",
        "belebele",
        "--data",
        bele,
        "--scoring",
        "answer",
        "--languages",
        "zho_Hans",
        "--device",
        "cpu",
    )
    assert "zho_Hans" in answer.stdout and "eng_Latn" not in answer.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "eng_Latn.jsonl").write_text('{"link": "x"}\n')
    one_line_error(
        herd_cli("eval", checkpoint, "--task", "belebele", "--data", bad, "--strict", check=False),
        "eng_Latn.jsonl:1: missing field 'question_number'",
    )


def test_herd_eval_generic_mc_and_perplexity(checkpoint, tmp_path):
    rows = [
        {
            "id": "a",
            "context": "Question: the sky is\nAnswer:",
            "choices": ["blue", "green"],
            "answer": 0,
        },
        {
            "id": "b",
            "context": "Question: two and two make\nAnswer:",
            "choices": ["three", "four", "five"],
            "answer": 1,
            "language": "eng_Latn",
        },
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "mc.json"
    herd_cli("eval", checkpoint, "--task", "mc", "--data", path, "--out", out, "--device", "cpu")
    record = json.loads(out.read_text())
    assert [len(r["logprobs"]) for r in record["results"]] == [2, 3]
    text = tmp_path / "t.txt"
    text.write_text("P: Le train pour Lyon part à huit heures.\n" * 20, "utf-8")
    proc = herd_cli("eval", checkpoint, "--task", "perplexity", "--data", text, "--device", "cpu")
    assert "bits/byte" in proc.stdout
    # the same text as prepared shards: every token after BOS predicted, EOS included (0 bytes)
    prepare([str(text)], checkpoint, tmp_path / "shards", val_fraction=0.0, show_progress=False)
    proc = herd_cli(
        "eval",
        checkpoint,
        "--task",
        "perplexity",
        "--data",
        tmp_path / "shards",
        "--split",
        "train",
        "--json",
        "--device",
        "cpu",
    )
    shards = json.loads(proc.stdout)  # --json: the one JSON object on stdout, nothing else
    from_text = perplexity(
        herd.load(checkpoint), herd.load_tokenizer(checkpoint), str(text), progress=False
    )
    assert shards["bytes"] == from_text["bytes"] and shards["tokens"] == from_text["tokens"] + 1
    summary = summarise([])
    assert summary["items"] == 0
