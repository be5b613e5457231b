"""`herd stability report RUN_DIR`: dashboards and a summary from a run folder's JSONL files.

stability.png has five panels: the training loss with detected spikes, rewinds and warnings
marked; per-layer gradient RMS against Adam's eps (log scale); the normalised-update histogram
over time as a heat map (bimodality shows as two bands near +-1); per layer, the largest
bimodality coefficient of any of its weight matrices' updates, against the uniform distribution's
5/9; and per-layer cosine between the applied update and the negative gradient. summary.txt says
what happened and when.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from herd.errors import HerdError
from herd.train.plots import plot_undone
from herd.train.runlog import read_jsonl, split_undone
from herd.train.stability import BIMODAL, bimodal_near_one
from herd.train.stability_stats import HIST_BINS, HIST_RANGE, layer_of


def report(run_dir: str | Path) -> tuple[Path, str]:
    run = Path(run_dir)
    metrics, undone = split_undone([m for m in read_jsonl(run / "metrics.jsonl") if "loss" in m])
    events = read_jsonl(run / "events.jsonl")
    records, _ = split_undone(read_jsonl(run / "stability.jsonl"))
    if not metrics:
        raise HerdError(f"{run}: no metrics.jsonl with training losses (not a herd run folder?)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(9, 15), sharex=True)
    steps = [m["step"] for m in metrics]
    axes[0].plot(steps, [m["loss"] for m in metrics], linewidth=0.8, color="#4c72b0")
    plot_undone(axes[0], undone, "step")
    marks = {
        "loss_spike": ("#c44e52", "spike"),
        "rewind": ("#8172b2", "rewind"),
        "instability_warning": ("#ccb974", "warning"),
    }
    for name, (color, label) in marks.items():
        at = [e["step"] for e in events if e["event"] == name]
        for k, s in enumerate(at):
            axes[0].axvline(
                s, color=color, linewidth=0.8, alpha=0.7, label=label if k == 0 else None
            )
    axes[0].set_ylabel("training loss")
    axes[0].set_yscale("log")
    if undone or any(e["event"] in marks for e in events):
        axes[0].legend(fontsize=8)
    if records:
        rsteps = [r["step"] for r in records]
        layers = sorted(
            {k for r in records for k in r["groups"]},
            key=lambda k: (k != "embed", k == "head", len(k), k),
        )
        eps = records[-1].get("eps", 1e-8)
        for layer in layers:
            rms = [r["groups"].get(layer, {}).get("grad_rms") for r in records]
            axes[1].plot(rsteps, [np.nan if x is None else x for x in rms], label=layer)
            worst = [_most_bimodal(r, layer) for r in records]
            axes[3].plot(rsteps, [np.nan if x is None else x for x in worst], label=layer)
            cos = [r["groups"].get(layer, {}).get("update_grad_cos") for r in records]
            axes[4].plot(rsteps, [np.nan if x is None else x for x in cos], label=layer)
        axes[1].axhline(eps, color="#c44e52", linestyle="--", label="Adam eps")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("gradient RMS")
        axes[1].legend(fontsize=7, ncol=4)
        hist = np.array([r.get("update_histogram", [0.0] * HIST_BINS) for r in records]).T
        # log10 of the share per bin: the bulk near 0 would otherwise hide the tails at +-1
        axes[2].imshow(
            np.log10(hist + 1e-6),
            aspect="auto",
            origin="lower",
            cmap="magma",
            extent=(rsteps[0], rsteps[-1], -HIST_RANGE, HIST_RANGE),
        )
        axes[2].set_ylabel("normalised update u\n(log10 share)")
        axes[3].axhline(BIMODAL, color="#c44e52", linestyle="--", label="5/9 (uniform)")
        axes[3].set_ylabel("update bimodality\n(max over matrices)")
        axes[3].legend(fontsize=7, ncol=4)
        axes[4].set_ylabel("cos(update, -gradient)")
        axes[4].axhline(0, color="#888", linewidth=0.8)
    axes[4].set_xlabel("step")
    # the histogram image would otherwise clip the shared axis to the monitored steps
    every = steps + [r["step"] for r in records]
    axes[4].set_xlim(min(every), max(every))
    fig.tight_layout()
    png = run / "plots" / "stability.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    text = summary(metrics, events, records)
    (run / "plots" / "stability_summary.txt").write_text(text + "\n")
    return png, text


def _most_bimodal(record: dict, layer: str) -> float | None:
    """The largest update bimodality among `layer`'s weight matrices in one record."""
    values = [
        t.get("update_bimodality")
        for name, t in record.get("tensors", {}).items()
        if layer_of(name) == layer
    ]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def bimodal_onset(records: list[dict], spike_step: int) -> tuple[int, str, dict] | None:
    """(step, matrix, its statistics) where the updates turned bimodal near +-1 before a spike:
    the first record of the unbroken run of such records that ends with the last record at or
    before `spike_step`; None when that record shows no bimodal matrix."""
    onset = None
    for r in reversed([r for r in records if r["step"] <= spike_step]):
        found = [(name, t) for name, t in r.get("tensors", {}).items() if bimodal_near_one(t)]
        if not found:
            break
        name, t = max(found, key=lambda kv: kv[1]["update_bimodality"])
        onset = (r["step"], name, t)
    return onset


def summary(metrics: list[dict], events: list[dict], records: list[dict]) -> str:
    lines = [
        f"{len(metrics)} logged steps, final training loss {metrics[-1]['loss']:.4f} at "
        f"step {metrics[-1]['step']}"
    ]
    spikes = [e for e in events if e["event"] == "loss_spike"]
    if spikes:
        lines.append(f"{len(spikes)} loss spike(s):")
        for e in spikes[:20]:
            lines.append(
                f"  step {e['step']}: loss {e['loss']:.4f} vs window median "
                f"{e['median']:.4f} (robust z {e['z']:.1f}); response {e['response']}"
            )
    else:
        lines.append("no loss spikes detected")
    for e in (e for e in events if e["event"] == "rewind"):
        lines.append(
            f"rewind at step {e['step']} to {e['checkpoint']} (step {e['to_step']}), "
            f"skipped {e['skipped_batches']} batches"
        )
    warns = [e for e in events if e["event"] == "instability_warning"]
    if warns:
        lines.append(
            f"early warnings (bimodal update, decorrelated gradients) at steps "
            f"{', '.join(str(e['step']) for e in warns[:10])}"
            f"{' ...' if len(warns) > 10 else ''}: layers {warns[0]['layers']}"
        )
    if spikes and records:
        onset = bimodal_onset(records, spikes[0]["step"])
        if onset:
            step, name, t = onset
            lines.append(
                f"before the first spike, the update of '{name}' turned bimodal near +-1 at step "
                f"{step} (bimodality {t['update_bimodality']:.2f}, mean |u| "
                f"{t['update_abs_mean']:.2f})"
            )
        else:
            lines.append("no weight matrix's update was bimodal near +-1 at the first spike")
    if records:
        last = records[-1]["groups"]
        worst = min(last, key=lambda k: last[k].get("grad_rms_over_eps") or np.inf)
        lines.append(
            f"last record (step {records[-1]['step']}): smallest gradient RMS / eps in "
            f"'{worst}' ({last[worst].get('grad_rms_over_eps'):.3g})"
        )
    return "\n".join(lines)
