"""experiments/guard.py end to end in its --quick form: rows, tokenizer, `herd guard train`'s
code, the metrics of the guard and of the keyword baseline on held-out templates, the policy
check and the plots; a rerun reuses the finished run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_quick_run_reports_guard_and_baseline(tmp_path):
    import guard

    result = guard.main(["--quick", "--quiet", "--out", str(tmp_path)])
    for key in ("guard", "guard_fpr5", "keywords"):
        overall = result[key]["overall"]
        assert overall["rows"] == result["rows"]["held_out"] > 0
        assert 0 <= overall["f1"] <= 1 and 0 <= overall["fpr"] <= 1
    assert result["guard_fpr5"]["overall"]["fpr"] <= 0.05
    assert set(result["policy_following"]) == {"S6", "S8"}
    held = [json.loads(x) for x in (tmp_path / "held_out.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert not {r["template"] for r in held} & {r["template"] for r in train}
    assert (tmp_path / "eval" / "pr_curve.png").is_file() and (tmp_path / "summary.md").is_file()
    again = guard.main(["--quick", "--quiet", "--out", str(tmp_path)])
    assert again["guard"] == result["guard"]
