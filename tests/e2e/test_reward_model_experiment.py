"""experiments/reward_model.py in its --quick form: the synthetic rated pairs, `herd rm` and
`herd rm eval` end to end, results.json with an accuracy per rating level; a rerun reuses it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_quick_run_reports_every_level(tmp_path):
    import reward_model

    # the task's quality is checkable by rule: "not" flips the next word's sign
    assert reward_model.quality(["good", "not", "good", "bad", "the"]) == -1
    rows = reward_model.pairs(40, seed=0)
    assert sorted(r["rating"] for r in rows).count("better") == 10  # a quarter per level
    summary = reward_model.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    levels = saved["results"]["none"]["levels"]
    assert set(levels) == {"significantly_better", "better", "slightly_better", "negligibly_better"}
    assert (tmp_path / "none" / "eval" / "score_differences.png").is_file()
    stamp = (tmp_path / "none" / "eval" / "eval.json").stat().st_mtime_ns
    reward_model.main(["--quick", "--out", str(tmp_path)])  # reuses the run
    assert (tmp_path / "none" / "eval" / "eval.json").stat().st_mtime_ns == stamp
