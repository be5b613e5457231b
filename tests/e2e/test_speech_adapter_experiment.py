"""experiments/speech_adapter.py end to end in its --quick form: clips spoken by espeak-ng, the
text model saved as a herd checkpoint, `herd train` of the speech adapter in a subprocess, greedy
transcripts of fresh clips of training voices and of held-out voices, for the adapter and the
text model alone; the files written and their structure (not the error rate: a smoke run learns
little); and the word error rate's rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_word_errors_is_word_level_edit_distance():
    import speech_adapter as sa

    assert sa.word_errors("seven four", "seven four") == 0
    assert sa.word_errors("seven", "seven four") == 1  # a deletion
    assert sa.word_errors("one seven four", "seven four") == 1  # an insertion
    assert sa.word_errors("two four", "seven four") == 1  # a substitution
    assert sa.score(["seven", "one two"], [{"said": "seven"}, {"said": "one three"}]) == {
        "wer": 1 / 3, "exact": 0.5, "clips": 2,
    }  # fmt: skip


def test_quick_run_writes_every_result(tmp_path):
    import speech_adapter as sa

    result = sa.main(["--quick", "--quiet", "--out", str(tmp_path)])
    for split in ("seen", "held_out"):
        for arm in ("adapter", "text_only"):
            r = result[split][arm]
            assert set(r) == {"wer", "exact", "clips"} and r["clips"] == 4
            assert r["wer"] >= 0 and 0 <= r["exact"] <= 1
    assert result["adapter_training"]["losses"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["held_out"] == result["held_out"]
    assert "| held-out voices | speech adapter |" in (tmp_path / "summary.md").read_text()
    rows = [json.loads(x) for x in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    held = {r["voice"].split("+")[1] for r in rows if r["split"] == "held_out"}
    assert held <= set(sa.HELD_OUT_VARIANTS)
    trained = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert not {r["voice"].split("+")[1] for r in trained} & set(sa.HELD_OUT_VARIANTS)
