"""experiments/bidirectionality.py end to end in its --quick form: four objectives trained, scored,
tabled and plotted; a rerun reuses the runs; greedy infilling agrees with the teacher-forced score."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from herd.checkpoint.convert import load
from herd.data.objectives import OBJECTIVES
from herd.data.shards import TokenShards

# the experiment's folder, as when it runs as a script: its modules import each other by name
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

import bidirectionality_infill as infill


@pytest.fixture(scope="module")
def experiment():
    import bidirectionality

    return bidirectionality


@pytest.fixture(scope="module")
def quick_run(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("bidirectionality")
    summary = experiment.main(["--quick", "--quiet", "--threads", "2", "--out", str(out)])
    return out, summary


def test_quick_run_reports_all_four_objectives(quick_run):
    out, _ = quick_run
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]) == set(OBJECTIVES)
    tokens = {r["tokens"] for r in saved["results"].values()}
    assert len(tokens) == 1 and tokens.pop() > 0  # equal compute: the same tokens processed
    for name, r in saved["results"].items():
        numbers = [r["val_loss"], r["val_bpb"]]
        for kind in ("infill", "prefix_only"):
            numbers += [r[kind]["token_accuracy"], r[kind]["exact_match"], r[kind]["loss"]]
            assert 0.0 <= r[kind]["token_accuracy"] <= 1.0, name
        assert all(math.isfinite(x) for x in numbers), (name, numbers)
        assert Path(r["checkpoint"]).is_dir()
    assert isinstance(saved["verdict"]["trade_off_shows"], bool)
    png = out / "bidirectionality.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mskbi |" in (out / "summary.md").read_text()


def test_rerun_reuses_finished_runs(experiment, quick_run, capsys):
    out, summary = quick_run
    again = experiment.main(["--quick", "--quiet", "--threads", "2", "--out", str(out)])
    assert capsys.readouterr().out.count("reusing the finished run") == len(OBJECTIVES)
    assert again["results"] == summary["results"]  # the same numbers, read back from the runs


def test_greedy_fill_matches_teacher_forced_scoring(quick_run):
    """Greedy decoding's own output, scored teacher-forced, must be an exact match: the padded,
    batched scorer and the one-sequence decoder see the same masks and positions."""
    out, summary = quick_run
    data = TokenShards(out / "data")
    tok = data.tokenizer()
    sentinels = [tok.token_id(f"<|mask_{k}|>") for k in range(4)]
    pieces = infill.infill_pieces(data, 32, 4, seed=0)
    for name in ("nxtuni", "mskbi"):
        model = load(summary["results"][name]["checkpoint"])
        bidirectional = OBJECTIVES[name][1]
        examples = []
        for tokens, span in pieces:
            for seq, first, region in (
                infill.sentinel_example(tokens, span, sentinels),
                infill.prefix_example(tokens, span),
            ):
                fill = infill.greedy_fill(
                    model, seq[:first], len(seq) - first, region, bidirectional
                )
                examples.append((seq[:first] + fill, first, region))
        scores = infill.teacher_forced(model, examples, bidirectional, batch_size=3)
        assert scores["exact_match"] == 1.0 and scores["token_accuracy"] == 1.0, name
