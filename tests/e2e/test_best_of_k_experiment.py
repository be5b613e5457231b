"""experiments/best_of_k.py in its --quick form for both task sets (SFT model, on-policy rated
pairs, `herd rm`, best-of-K by it); its quality and rating rules, the list task's check, and the
best-of-K estimator against every subset counted out."""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

import pytest

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_quality_and_rating_rules():
    import best_of_k

    assert best_of_k.quality("plek", "plek") == 1.0
    assert best_of_k.quality("plek", "kelp") == pytest.approx(1 - 4 / 4)  # four substitutions
    assert best_of_k.quality("20", "21") == pytest.approx(0.5)
    assert best_of_k.quality("KELPS", "KELP") == pytest.approx(1 - 1 / 5)
    assert [best_of_k.rating(g) for g in (0.9, 0.4, 0.2, 0.1)] == [
        "significantly better",
        "better",
        "slightly better",
        "negligibly better",
    ]


def test_list_task_checks():
    import best_of_k_lists as lists

    key = ("trees", 3, ("oak", "pine"))
    assert lists.prompt_of(key) == "Name three trees other than oak and pine."
    assert lists.right("elm, ash and beech", key)
    assert lists.quality("elm, oak and beech", key) == pytest.approx(2 / 3)  # excluded
    assert lists.quality("elm, elm and beech", key) == pytest.approx(2 / 3)  # twice
    assert lists.quality("elm, trout and beech", key) == pytest.approx(2 / 3)  # another kind
    assert lists.quality("elm, ash, birch and beech", key) == pytest.approx(3 / 4)  # too many
    assert lists.quality("elm and ash", key) == pytest.approx(2 / 3)  # too few
    assert lists.quality("", key) == 0.0
    rng = random.Random(0)
    for _ in range(50):  # the annotator's answers are right, its careless ones never
        assert lists.right(lists.answer(key, rng), key)
        assert not lists.right(lists.careless(key, rng), key)
    args = type("Args", (), {"seed": 0, "held_out": 0.2})()
    keys = lists.split_keys(args)
    held_out = {(k, tuple(x)) for k, _, x in keys["held_out"]}
    assert held_out and not held_out & {(k, tuple(x)) for k, _, x in keys["train"]}


def test_expected_pick_is_the_mean_over_every_subset():
    import best_of_k

    rng = random.Random(1)
    scores = [rng.random() for _ in range(7)]
    values = [float(rng.random() < 0.5) for _ in range(7)]
    for k in (1, 2, 3, 7):
        subsets = list(itertools.combinations(range(7), k))
        direct = sum(values[max(s, key=scores.__getitem__)] for s in subsets) / len(subsets)
        assert best_of_k.expected_pick(scores, values, k) == pytest.approx(direct)


@pytest.mark.parametrize("task", ["lists", "exact"])
def test_quick_run_writes_its_tables(tmp_path, task):
    import best_of_k

    summary = best_of_k.main(["--quick", "--task", task, "--out", str(tmp_path), "--quiet"])
    saved = json.loads((tmp_path / "best_of_k.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    bok = saved["best_of_k"]
    assert bok["task"] == task and bok["samples"] == 32
    oracle = [bok["oracle"][str(k)] for k in best_of_k.KS]
    assert oracle == sorted(oracle)  # any of K right: never fewer with more samples
    assert all(bok["best_of_k"][str(k)] <= bok["oracle"][str(k)] + 1e-9 for k in best_of_k.KS)
    assert bok["best_of_k"]["1"] == pytest.approx(bok["random_sample"])
    assert saved["rm_accuracy"]["pairs"] > 0
    assert (tmp_path / "best_of_k.png").is_file()
    assert (tmp_path / "rm_score_differences.png").is_file()
