"""experiments/post_training.py end to end in its --quick form: both starting points, SFT from
each, every checkpoint scored on held-out and training prompts; a rerun reuses the runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

MODELS = ("random_init", "random_init+sft", "pretrained", "pretrained+sft")


@pytest.fixture(scope="module")
def experiment():
    import post_training

    return post_training


@pytest.fixture(scope="module")
def quick_run(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("post_training")
    summary = experiment.main(["--quick", "--quiet", "--threads", "2", "--out", str(out)])
    return out, summary


def test_quick_run_reports_every_model_and_task(experiment, quick_run):
    out, _ = quick_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["stages"] == ["sft"]
    assert set(saved["results"]) == set(MODELS)
    for name, r in saved["results"].items():
        assert Path(r["checkpoint"]).is_dir(), name
        for split in ("held_out", "train"):
            scores = r["scores"][split]
            assert set(scores) == {*experiment.TASKS, "overall"}
            for task in experiment.TASKS:
                assert scores[task]["n"] == 6
                assert scores[task]["examples"][0]["prompt"]
            for key in ("exact_match", "eot_share"):
                assert 0.0 <= scores["overall"][key] <= 1.0, (name, split, key)
    # the random initialisation never ends its turn: it has never seen <|eot_id|>
    assert saved["results"]["random_init"]["scores"]["held_out"]["overall"]["eot_share"] == 0.0
    for name in ("pretrained", "random_init+sft", "pretrained+sft"):
        assert saved["results"][name]["train_seconds"] > 0
    assert "| pretrained+sft |" in (out / "summary.md").read_text()
    # the SFT set is the chat format's rows, and no held-out item is in any training text
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    prose = " ".join(p.read_text() for p in (out / "pretrain_corpus").iterdir())
    prompts = {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    held = saved["results"]["random_init"]["scores"]["held_out"]
    for task in experiment.TASKS:
        for example in held[task]["examples"]:
            assert example["prompt"] not in prompts
            answer = example["answer"]
            word = {"reverse": answer[::-1], "upper": answer.lower()}.get(task)
            if word is not None:  # the prose says "The word W reversed is ..." of training words
                assert f"The word {word} " not in prose


def test_rerun_reuses_finished_runs(experiment, quick_run, capsys):
    out, summary = quick_run
    again = experiment.main(["--quick", "--quiet", "--threads", "2", "--out", str(out)])
    assert capsys.readouterr().out.count("reusing the finished") == 3
    for name in MODELS:
        assert again["results"][name]["scores"] == summary["results"][name]["scores"]
