"""Scaling-law figures: loss against compute with the fitted frontier, IsoFLOP profiles, and
fitted against observed loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from herd.scaling.chinchilla import chinchilla_flops


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(points: list[dict], law, path: Path) -> Path:
    plt = _plt()
    n = np.array([p["params"] for p in points])
    d = np.array([p["tokens"] for p in points])
    loss = np.array([p["loss"] for p in points])
    c = chinchilla_flops(n, d)
    fig, ax = plt.subplots(figsize=(7, 5))
    sc = ax.scatter(c, loss, c=np.log10(n), cmap="viridis", s=25)
    fig.colorbar(sc, ax=ax, label="log10 parameters")
    grid = np.geomspace(c.min() / 2, c.max() * 20, 100)
    n_opt, d_opt = law.optimal(grid)
    ax.plot(grid, law.loss(n_opt, d_opt), color="#c44e52", label="compute-optimal frontier (fit)")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("validation loss")
    ax.legend()
    return _save(fig, plt, path)


def plot_fit(points: list[dict], law, path: Path) -> Path:
    plt = _plt()
    observed = np.array([p["loss"] for p in points])
    predicted = law.loss([p["params"] for p in points], [p["tokens"] for p in points])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(observed, predicted, s=20)
    lo, hi = min(observed.min(), predicted.min()), max(observed.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], color="#888", linestyle="--", linewidth=1)
    ax.set_xlabel("observed loss")
    ax.set_ylabel("fitted loss")
    ax.set_title("L(N, D) = E + A/N^alpha + B/D^beta")
    return _save(fig, plt, path)


def plot_isoflop(points: list[dict], result: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    cmap = plt.get_cmap("plasma")
    profiles = result["profiles"]
    for k, prof in enumerate(profiles):
        color = cmap(k / max(1, len(profiles) - 1) * 0.85)
        idx = prof["points"]
        n = np.array([points[i]["params"] for i in idx])
        ax.scatter(n, [points[i]["loss"] for i in idx], color=color, s=20)
        x = np.linspace(np.log(n.min()), np.log(n.max()), 50)
        ax.plot(
            np.exp(x),
            np.polyval(prof["parabola"], x),
            color=color,
            label=f"C = {prof['flops']:.2g}",
        )
        ax.scatter([prof["params_opt"]], [prof["loss_opt"]], color=color, marker="*", s=120)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOP profiles (stars: fitted optima)")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
