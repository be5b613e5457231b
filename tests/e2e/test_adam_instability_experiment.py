"""The Adam-instability experiment end to end: the detector fires on the spike, and the run with
automatic rewind-and-skip ends at a lower loss than the same run without a response."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

import adam_instability


def test_detector_fires_and_rewind_ends_lower(tmp_path):
    result = adam_instability.run_experiment(tmp_path, steps=340, skip_batches=20)
    plain, rewound = result["without"], result["with_rewind"]
    assert plain["spikes"] and 295 <= plain["spikes"][0] <= 320  # (b) the detector fires
    assert rewound["rewinds"]  # the response happened, and is logged
    assert rewound["final_loss"] < plain["final_loss"]  # (c) ends lower
    # (a), loosely: calm before the spike (every matrix's update unimodal around 0, tiny),
    # bimodal near +-1 at its onset.
    calm = [r for r in result["precursors"] if r["step"] <= plain["spikes"][0] - 10]
    assert calm and max(r["update_abs_mean"] for r in calm[-40:]) < 0.2
    assert result["bimodal_onset"] is not None
