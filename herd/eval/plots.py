"""PNG charts of evaluation results: accuracy per language, sorted, with 95% intervals."""

from __future__ import annotations

from pathlib import Path


def plot_accuracy(summary: dict, path: Path, title: str = "", chance: float = 0.25) -> Path:
    """Horizontal bars (one per language, best on top) with Wilson 95% intervals and the chance
    line; the figure grows with the number of languages so 122 of them stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["languages"].items(), key=lambda kv: kv[1]["accuracy"])
    names = [lang for lang, _ in rows]
    acc = [r["accuracy"] for _, r in rows]
    low = [r["accuracy"] - r["ci95"][0] for _, r in rows]
    high = [r["ci95"][1] - r["accuracy"] for _, r in rows]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * len(rows)))
    ax.barh(names, acc, xerr=[low, high], color="#4c72b0", ecolor="#444", capsize=2)
    ax.axvline(chance, color="#c44e52", linestyle="--", linewidth=1, label=f"chance {chance:g}")
    ax.axvline(
        summary["macro_accuracy"],
        color="#55a868",
        linewidth=1,
        label=f"macro average {summary['macro_accuracy']:.3f}",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% Wilson interval)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
