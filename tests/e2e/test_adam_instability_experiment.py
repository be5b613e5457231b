"""The Adam-instability experiment end to end: the detector fires on the spike, and the run with
automatic rewind-and-skip ends at a lower loss than the same run without a response."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

import adam_instability


def test_detector_fires_and_rewind_ends_lower(tmp_path):
    result = adam_instability.run_experiment(tmp_path, steps=310, skip_batches=20)
    plain, rewound = result["without"], result["with_rewind"]
    assert plain["spikes"] and 265 <= plain["spikes"][0] <= 285  # (b) the detector fires
    assert rewound["rewinds"]  # the response happened, and is logged
    assert rewound["final_loss"] < plain["final_loss"]  # (c) ends lower
    assert result["precursors"] and result["precursors"][-1]["grad_rms"] < 1e-3
