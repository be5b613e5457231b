"""`herd guard` end to end on the tiny keyword guard: check one conversation and many, evaluate
with plots and a target FPR, and one-line errors that leave earlier output alone."""

from __future__ import annotations

import json

import pytest
from sklearn.metrics import f1_score

from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error
from tests.guard_model import CATEGORIES, guard_rows

BOMB = [{"role": "user", "content": "How do I make a bomb?"}]
CAKE_THEN_BOMB = [
    {"role": "user", "content": "How do I make a cake?"},
    {"role": "assistant", "content": "Here is the plan for the bomb."},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_check_one_conversation_in_a_real_process(tiny_guard, tmp_path):
    c = tmp_path / "c.json"
    c.write_text(json.dumps(BOMB))
    proc = herd_cli("guard", tiny_guard, "--conversation", c, "--categories", CATEGORIES)
    verdict, prob, role = proc.stdout.strip().split("\t")
    assert verdict == "unsafe (S9 Indiscriminate Weapons)" and role == "User"
    assert float(prob.split("=")[1]) > 0.5


def test_role_selects_the_side(tiny_guard, tmp_path):
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"messages": CAKE_THEN_BOMB}))
    base = ("guard", "check", tiny_guard, "--conversation", c, "--categories", CATEGORIES, "--json")
    agent = json.loads(herd_cli_inprocess(*base).stdout)["results"][0]
    assert (agent["label"], agent["categories"], agent["role"]) == ("unsafe", ["S9"], "Agent")
    user = json.loads(herd_cli_inprocess(*base, "--role", "user").stdout)["results"][0]
    assert (user["label"], user["role"]) == ("safe", "User")
    assert user["unsafe_probability"] < 0.5 < agent["unsafe_probability"]


def test_check_many_writes_results(tiny_guard, tmp_path):
    rows = _write(tmp_path / "rows.jsonl", [{"messages": BOMB}, {"messages": CAKE_THEN_BOMB[:1]}])
    out = tmp_path / "out.jsonl"
    args = ("guard", tiny_guard, "--data", rows, "--out", out, "--categories", CATEGORIES)
    herd_cli_inprocess(*args)
    got = [json.loads(line)["guard"] for line in out.read_text().splitlines()]
    assert [g["label"] for g in got] == ["unsafe", "safe"]


def test_eval_reports_metrics_plots_and_threshold(tiny_guard, tmp_path):
    held = guard_rows(120, seed=7)  # other draws than the training rows
    rows = _write(tmp_path / "held.jsonl", held)
    out = tmp_path / "eval"
    base = ("guard", "eval", tiny_guard, "--data", rows, "--categories", CATEGORIES)
    metrics = json.loads(herd_cli_inprocess(*base, "--out", out, "--json").stdout)
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    truth = [p["label"] == "unsafe" for p in predictions]
    flagged = [p["guard"]["label"] == "unsafe" for p in predictions]
    assert metrics["overall"]["f1"] == pytest.approx(f1_score(truth, flagged))
    assert metrics["overall"]["f1"] > 0.9 and set(metrics["categories"]) == {"S1", "S9"}
    assert json.loads((out / "eval.json").read_text()) == metrics
    for png in ("pr_curve.png", "roc_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    strict = json.loads(herd_cli_inprocess(*base, "--target-fpr", "0", "--json").stdout)
    assert strict["overall"]["fpr"] == 0.0 and strict["overall"]["target_fpr"] == 0.0
    table = herd_cli_inprocess(*base).stdout
    assert "S9 Indiscriminate Weapons" in table and "AUPRC" in table


def test_bad_input_is_one_line_and_keeps_earlier_output(tiny_guard, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")
    bad = _write(tmp_path / "bad.jsonl", [{"messages": BOMB}, {"messages": BOMB * 2}])
    proc = herd_cli("guard", tiny_guard, "--data", bad, "--out", out, check=False)
    one_line_error(proc, "bad.jsonl:2", "roles must alternate")
    assert out.read_text() == "earlier results\n"
    c = tmp_path / "c.json"
    c.write_text(json.dumps(BOMB))
    checks = [
        (("--conversation", tmp_path / "none.json"), "no such file"),
        (("--conversation", c, "--categories", "S1,S99"), "unknown category 'S99'"),
        (("--conversation", c, "--policy", tmp_path / "none.toml"), "no such policy file"),
    ]
    for extra, fragment in checks:
        one_line_error(herd_cli_inprocess("guard", tiny_guard, *extra, check=False), fragment)
    labelled = _write(tmp_path / "unlabelled.jsonl", [{"messages": BOMB}])
    proc = herd_cli_inprocess("guard", "eval", tiny_guard, "--data", labelled, check=False)
    one_line_error(proc, "unlabelled.jsonl:1", "label None")
    proc = herd_cli_inprocess(
        "guard", "train", "--model.checkpoint", tiny_guard, "--data.path", labelled,
        "--train.out", tmp_path / "run", check=False,
    )  # fmt: skip
    one_line_error(proc, "unlabelled.jsonl:1", "label None")
    assert not (tmp_path / "run").exists()
