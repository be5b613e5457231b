"""experiments/best_of_k.py in its --quick form: SFT model, on-policy rated pairs, `herd rm`,
best-of-K by it; and its quality and rating rules."""

from __future__ import annotations

import json
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


def test_quick_run_writes_its_tables(tmp_path):
    import best_of_k

    summary = best_of_k.main(["--quick", "--out", str(tmp_path), "--quiet"])
    saved = json.loads((tmp_path / "best_of_k.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    bok = saved["best_of_k"]
    oracle = [bok["oracle"][str(k)] for k in best_of_k.KS]
    assert oracle == sorted(oracle)  # any of the first K right: never fewer with more samples
    assert all(bok["best_of_k"][str(k)] <= bok["oracle"][str(k)] for k in best_of_k.KS)
    assert saved["rm_accuracy"]["pairs"] > 0
    assert (tmp_path / "best_of_k.png").is_file()
    assert (tmp_path / "rm_score_differences.png").is_file()
