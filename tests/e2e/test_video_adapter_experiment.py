"""experiments/video_adapter.py: its clips tell motion only over time (the frame a single-frame
model sees is drawn alike for every motion), its scoring reads captions exactly, and its --quick
form runs every step (clips as mp4, the caption LM, stage 1 on stills, stage 2 for both arms
through `herd train`, greedy captions of both test splits) and writes every result (not the
accuracy: a smoke run learns little)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_the_middle_frame_is_alike_for_every_motion():
    import video_adapter as vd

    clips = {m: vd.clip_frames("square", "red", m, random.Random(5)) for m in vd.MOTIONS}
    middles = {m: np.asarray(frames[vd.FRAMES // 2]) for m, frames in clips.items()}
    for m in vd.MOTIONS:
        assert len(clips[m]) == vd.FRAMES
        assert np.array_equal(middles[m], middles["left"]), m
    first = {m: np.asarray(frames[0]) for m, frames in clips.items()}
    assert len({f.tobytes() for f in first.values()}) == len(vd.MOTIONS)  # the ends differ

    # the shape stays whole on the canvas over every frame of every motion
    for frames in clips.values():
        for frame in frames:
            painted = np.argwhere(np.asarray(frame).min(axis=2) < 255)
            assert painted.size and painted.min() > 0 and painted.max() < vd.SIDE - 1


def test_captions_are_scored_exactly():
    import video_adapter as vd

    rows = [{"text": vd.motion_caption("red", "square", m), "colour": "red", "shape": "square",
             "motion": m} for m in ("left", "growing")]  # fmt: skip
    said = [rows[0]["text"], "a red square moving right."]
    s = vd.score(said, rows)
    assert s["exact"] == 0.5 and s["motion"] == 0.5 and s["colour"] == s["shape"] == 1.0
    assert s["confusion"]["left"]["left"] == 1 and s["confusion"]["growing"]["right"] == 1
    assert s["per_motion"] == {**dict.fromkeys(vd.MOTIONS, 0.0), "left": 1.0}


def test_quick_run_writes_every_result(tmp_path):
    import video_adapter as vd

    result = vd.main(["--quick", "--quiet", "--out", str(tmp_path)])
    n = vd.QUICK["test_clips"]
    for split in ("seen", "held_out"):
        for arm in vd.ARMS:
            r = result[split][arm]
            assert r["clips"] == n and set(r["per_motion"]) == set(vd.MOTIONS)
            assert all(0 <= r[k] <= 1 for k in (*vd.ATTRIBUTES, "exact"))
            assert sum(sum(c.values()) for c in r["confusion"].values()) == n
    for arm in vd.ARMS:
        assert result["video_training"][arm]["losses"]
    assert 0 < result["video_trainable_parameters"] < result["parameters"]
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "summary.md").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["held_out"] == result["held_out"]
    assert Image.open(tmp_path / "video_adapter.png").size[0] > 0
    rows = [json.loads(x) for x in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(vd.ARMS) * n
    held = {(r["colour"], r["shape"]) for r in rows if r["split"] == "held_out"}
    assert held <= set(vd.va.HELD_OUT_PAIRS)
    trained = (tmp_path / "clips" / "captions.jsonl").read_text()
    assert not any(f"{c} {s}" in trained for c, s in vd.va.HELD_OUT_PAIRS)
    assert all((tmp_path / "clips" / r["video"]).is_file() for r in rows)
