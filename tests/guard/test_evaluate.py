"""herd/guard/evaluate.py against scikit-learn's metrics, and the threshold for a target FPR."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from herd.guard.classify import GuardResult
from herd.guard.evaluate import guard_metrics, threshold_for_fpr


def _data(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    rows, results = [], []
    for _ in range(n):
        unsafe = rng.random() < 0.4
        codes = sorted(rng.choice(["S1", "S2", "S10"], size=rng.integers(1, 3), replace=False))
        p = float(np.clip(rng.normal(0.7 if unsafe else 0.3, 0.2), 0, 1))
        rows.append({"label": "unsafe" if unsafe else "safe",
                     "categories": codes if unsafe else []})  # fmt: skip
        named = codes[:1] if rng.random() < 0.8 else ["S2"]
        results.append(GuardResult("unsafe" if p >= 0.5 else "safe", p,
                                   tuple(named) if p >= 0.5 else (), "User"))  # fmt: skip
    return rows, results


def test_overall_matches_sklearn():
    rows, results = _data()
    m = guard_metrics(rows, results, 0.5, ("S1", "S2", "S10"))["overall"]
    truth = np.array([r["label"] == "unsafe" for r in rows])
    scores = np.array([r.unsafe_probability for r in results])
    p, r, f, _ = precision_recall_fscore_support(truth, scores >= 0.5, average="binary")
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["fpr"] == pytest.approx(((scores >= 0.5) & ~truth).sum() / (~truth).sum())
    assert m["auprc"] == pytest.approx(average_precision_score(truth, scores))


def test_per_category_is_one_vs_rest():
    rows, results = _data(1)
    per = guard_metrics(rows, results, 0.5, ("S1", "S2", "S10"))["categories"]
    for code in ("S1", "S2", "S10"):
        truth = np.array([code in r["categories"] for r in rows])
        predicted = np.array([r.label == "unsafe" and code in r.categories for r in results])
        p, r, f, _ = precision_recall_fscore_support(
            truth, predicted, average="binary", zero_division=0
        )
        assert (per[code]["precision"], per[code]["recall"], per[code]["f1"]) == pytest.approx(
            (p, r, f)
        )
        assert per[code]["fpr"] == pytest.approx((predicted & ~truth).sum() / (~truth).sum())
        assert per[code]["rows"] == truth.sum()


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_threshold_for_fpr_is_the_lowest_meeting_the_target(target):
    rows, results = _data(2)
    scores = np.array([r.unsafe_probability for r in results])
    unsafe = np.array([r["label"] == "unsafe" for r in rows])
    t = threshold_for_fpr(scores, unsafe, target)
    safe = scores[~unsafe]
    assert (safe >= t).mean() <= target
    lower = np.unique(scores[scores < t])
    if lower.size:  # the next lower candidate breaks the target
        assert (safe >= lower[-1]).mean() > target
