"""experiments/mav3d_oracle.py --quick: every step of the study runs (herd 4d --oracle, the
per-stage checkpoints evaluated on held-out views, the summary and the render-vs-truth GIF)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import mav3d_oracle


def test_quick_study_runs_every_step(tmp_path):
    summary = mav3d_oracle.main(["--quick", "--out", str(tmp_path)])
    scores = summary["held_out_psnr_db"]
    assert list(scores) == ["untrained", "static", "dynamic", "sr"]
    assert all(math.isfinite(v) and v > 0 for v in scores.values())
    assert json.loads((tmp_path / "summary.json").read_text())["views"] == 12
    with Image.open(tmp_path / "held_out.gif") as gif:
        assert gif.n_frames == 12 and gif.size == (4 * 32, 4 * 16)  # render | truth, 4x
