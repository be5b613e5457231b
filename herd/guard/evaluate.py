"""`herd guard eval`: how well a guard separates unsafe from safe conversations.

Overall, "unsafe" is the positive class and a row is flagged when its unsafe probability reaches
the threshold: precision, recall, F1 and false-positive rate (flagged safe rows / safe rows) at
that threshold, and the area under the precision-recall curve (average precision, threshold-free)
and under the ROC curve. Llama Guard 3's model card reports response classification this way
(F1 0.939, FPR 0.040 for the 8B model on Meta's internal set).

Per category (one-vs-rest, as Llama Guard's paper evaluates categories): the positives are the
rows labelled with that category; a row is predicted positive when it is flagged and the guard
names that category. Precision, recall, F1 and FPR (predicted-positive rows among the rows
without the category) follow; AUPRC ranks that category's rows against the safe rows by the
unsafe probability (how well the score alone finds this kind of harm).

`--target-fpr` picks the lowest threshold whose false-positive rate on the safe rows is at most
the target, and reports everything at it.
"""

from __future__ import annotations

import numpy as np

from herd.errors import HerdError


def threshold_for_fpr(scores: np.ndarray, unsafe: np.ndarray, target: float) -> float:
    """The lowest threshold t with mean(safe scores >= t) <= target."""
    if not 0.0 <= target < 1.0:
        raise HerdError(f"--target-fpr {target}: expected a rate in [0, 1)")
    safe = np.sort(scores[~unsafe])[::-1]
    if safe.size == 0:
        raise HerdError("--target-fpr needs safe rows to measure false positives on")
    allowed = int(np.floor(target * safe.size + 1e-9))  # false positives the target allows
    if allowed >= safe.size:
        return 0.0
    # flag at most `allowed` safe rows: just above the (allowed+1)-th highest safe score
    return float(np.nextafter(safe[allowed], np.inf))


def _rates(truth: np.ndarray, predicted: np.ndarray) -> dict:
    tp = int((truth & predicted).sum())
    fp = int((~truth & predicted).sum())
    fn = int((truth & ~predicted).sum())
    tn = int((~truth & ~predicted).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": f1, "fpr": fpr}  # fmt: skip


def _areas(truth: np.ndarray, scores: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if truth.all() or not truth.any():
        return {"auprc": None, "auroc": None}  # undefined with one class
    return {
        "auprc": float(average_precision_score(truth, scores)),
        "auroc": float(roc_auc_score(truth, scores)),
    }


def guard_metrics(rows: list[dict], results: list, threshold: float, codes: tuple) -> dict:
    """Overall and per-category metrics of `results` (GuardResult, one per labelled row)."""
    scores = np.array([r.unsafe_probability for r in results])
    unsafe = np.array([row["label"] == "unsafe" for row in rows])
    flagged = scores >= threshold
    overall = {"rows": len(rows), "unsafe_rows": int(unsafe.sum()), "threshold": threshold,
               **_rates(unsafe, flagged), **_areas(unsafe, scores)}  # fmt: skip
    per_category = {}
    for code in codes:
        truth = np.array([code in row["categories"] for row in rows])
        if not truth.any():
            continue
        named = np.array([code in r.categories for r in results])
        ranked = truth | ~unsafe  # this category's rows against the safe ones
        per_category[code] = {
            "rows": int(truth.sum()),
            **_rates(truth, flagged & named),
            "flagged": float(flagged[truth].mean()),  # flagged at all, whatever categories
            "auprc": _areas(truth[ranked], scores[ranked])["auprc"],
        }
    return {"overall": overall, "categories": per_category}


def plot_curves(rows: list[dict], results: list, policy, out) -> list:
    """pr_curve.png and roc_curve.png: overall (bold) and per category against the safe rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from herd.atomic_files import write_file_atomically

    scores = np.array([r.unsafe_probability for r in results])
    unsafe = np.array([row["label"] == "unsafe" for row in rows])
    if unsafe.all() or not unsafe.any():
        raise HerdError("the curves need both safe and unsafe rows")
    curves = [("all unsafe", unsafe, np.ones_like(unsafe))]
    for code in policy.codes:
        truth = np.array([code in row["categories"] for row in rows])
        if truth.any():
            curves.append((f"{code} {policy.name_of(code)}", truth, truth | ~unsafe))
    written = []
    for name, curve in (("pr_curve.png", precision_recall_curve), ("roc_curve.png", roc_curve)):
        fig, ax = plt.subplots(figsize=(7, 5))
        for i, (label, truth, kept) in enumerate(curves):
            a, b, _ = curve(truth[kept], scores[kept])
            x, y = (a, b) if name == "roc_curve.png" else (b, a)  # recall on x for PR
            ax.plot(x, y, lw=2.5 if i == 0 else 0.9, alpha=1.0 if i == 0 else 0.6, label=label)
        if name == "roc_curve.png":
            ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
            ax.set_xlabel("false-positive rate")
            ax.set_ylabel("true-positive rate")
        else:
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
        ax.set_title(f"{name[:-10].upper()} curve: unsafe probability (per category vs safe rows)")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / name
        write_file_atomically(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
        plt.close(fig)
        written.append(path)
    return written


def format_report(metrics: dict, policy) -> str:
    o = metrics["overall"]
    auprc = "n/a" if o["auprc"] is None else f"{o['auprc']:.3f}"
    lines = [
        f"{o['rows']} rows ({o['unsafe_rows']} unsafe), threshold {o['threshold']:.4f}: "
        f"precision {o['precision']:.3f}, recall {o['recall']:.3f}, F1 {o['f1']:.3f}, "
        f"FPR {o['fpr']:.3f}, AUPRC {auprc}",
        f"{'category':<32}{'rows':>6}{'precision':>11}{'recall':>8}{'F1':>7}{'FPR':>7}"
        f"{'flagged':>9}{'AUPRC':>7}",
    ]
    for code, m in metrics["categories"].items():
        area = "n/a" if m["auprc"] is None else f"{m['auprc']:.3f}"
        lines.append(
            f"{code + ' ' + policy.name_of(code):<32}{m['rows']:>6}{m['precision']:>11.3f}"
            f"{m['recall']:>8.3f}{m['f1']:>7.3f}{m['fpr']:>7.3f}{m['flagged']:>9.3f}{area:>7}"
        )
    return "\n".join(lines)
