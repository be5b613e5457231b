"""experiments/vision_adapter.py end to end in its --quick form: pictures drawn with Pillow, the
caption LM saved as a herd checkpoint, `herd train` of the adapter in a subprocess, greedy
captions of fresh and held-out-pair pictures for the adapter and the text model alone; the
files written and their structure (not the accuracy: a smoke run learns little)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_captions_are_exactly_checkable():
    import vision_adapter as va

    scenes = va.all_scenes()
    assert len({s.caption() for s in scenes}) == len(scenes) == 216
    for s in scenes:
        said = va.read_caption(s.caption())
        assert said == {"count": va.COUNTS[s.count - 1], "colour": s.colour, "shape": s.shape,
                        "position": s.position}  # fmt: skip
    assert va.read_caption("blue") == {"count": None, "colour": "blue", "shape": None,
                                       "position": None}  # fmt: skip


def test_quick_run_writes_every_result(tmp_path):
    import vision_adapter as va

    result = va.main(["--quick", "--quiet", "--out", str(tmp_path)])
    for split in ("seen", "held_out"):
        for arm in ("adapter", "text_only"):
            r = result[split][arm]
            assert set(r) == {*va.ATTRIBUTES, "exact", "pictures"}
            assert r["pictures"] == va.QUICK["test_pictures"]
            assert all(0 <= r[k] <= 1 for k in (*va.ATTRIBUTES, "exact"))
    assert result["adapter_training"]["losses"] and result["trainable_parameters"] > 0
    assert result["trainable_parameters"] < result["parameters"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["held_out"] == result["held_out"]
    assert "| held-out colour-shape pairs | adapter |" in (tmp_path / "summary.md").read_text()
    assert Image.open(tmp_path / "vision_adapter.png").size[0] > 0
    rows = [json.loads(x) for x in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * va.QUICK["test_pictures"]
    held = {(r["text"].split()[1], r["text"].split()[2].rstrip("s.")) for r in rows
            if r["split"] == "held_out"}  # fmt: skip
    assert held <= set(va.HELD_OUT_PAIRS)
    trained = (tmp_path / "pictures" / "captions.jsonl").read_text()
    assert not any(f"{c} {s}" in trained for c, s in va.HELD_OUT_PAIRS)
    canvases = {Image.open(tmp_path / "pictures" / r["image"]).size for r in rows}
    assert canvases == set(va.CANVASES.values())  # square, wide and tall: tiled differently
    assert (tmp_path / "run" / "checkpoints" / "step-00000020" / "config.json").is_file()
