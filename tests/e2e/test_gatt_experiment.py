"""experiments/gatt.py end to end in its --quick form: base SFT, `herd gatt` with the base model,
the two continuations, every model scored per turn with and without the instruction; a rerun
reuses the runs and the GAtt rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_quick_run_scores_every_model_at_every_turn(tmp_path):
    import gatt

    record = gatt.main(["--quick", "--quiet", "--out", str(tmp_path)])
    assert set(record["results"]) == {"base", "base+sft", "base+gatt"}
    for scores in record["results"].values():
        for case in ("instruction", "no_instruction"):
            assert set(scores[case]) == {"rule", "exact"}
            assert all(len(v) == 6 and all(0 <= x <= 1 for x in v) for v in scores[case].values())
    rows = (tmp_path / "data" / "with_gatt" / "gatt.jsonl").read_text("utf-8").splitlines()
    assert record["gatt_data"]["rows"] == len(rows) > 0
    first = json.loads(rows[0])["messages"]
    assert first[0] == {"role": "system", "content": gatt.INSTRUCTION}
    assert (tmp_path / "summary.md").is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"] == record["results"]
    # a rerun reuses the finished runs and rows: the same scores
    assert gatt.main(["--quick", "--quiet", "--out", str(tmp_path)])["results"] == record["results"]


def test_case_rule():
    import gatt

    assert gatt.in_case("K E L P", upper=True) and not gatt.in_case("KeLP", upper=True)
    assert gatt.in_case("kelp", upper=False) and not gatt.in_case("...", upper=False)
