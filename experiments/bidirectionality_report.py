"""The report of experiments/bidirectionality.py: the verdict on the paper's trade-off, the table,
the plot and a sample infilling.

Artetxe et al. 2022 compare objectives along two knobs (bidirectional context, bidirectional
attention); `verdict` compares pairs that differ in one knob only, so each comparison isolates it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from herd.data.objectives import OBJECTIVES


def verdict(results: dict) -> dict:
    """Compare along each knob of the paper's grid, pairs that differ in that knob only.

    A next-token model's infilling is its better format (sentinel prompt or prefix-only), so
    bidirectional context has to beat what the other model can do at all.
    """
    if set(results) != set(OBJECTIVES):
        return {}

    def infill(name: str) -> float:
        r = results[name]
        if OBJECTIVES[name][0]:
            return r["infill"]["token_accuracy"]
        return max(r["infill"]["token_accuracy"], r["prefix_only"]["token_accuracy"])

    knobs = {
        "context": [("nxtuni", "mskuni"), ("nxtpre", "mskbi")],
        "attention": [("nxtuni", "nxtpre"), ("mskuni", "mskbi")],
    }
    out = {}
    for knob, pairs in knobs.items():
        comparisons = [
            {
                "without": a,
                "with": b,
                "infill_accuracy_gain": infill(b) - infill(a),
                "next_token_loss_change": results[b]["val_loss"] - results[a]["val_loss"],
            }
            for a, b in pairs
        ]
        out[knob] = {
            "pairs": comparisons,
            "helps_infilling": all(c["infill_accuracy_gain"] > 0 for c in comparisons),
            "hurts_next_token": all(c["next_token_loss_change"] > 0 for c in comparisons),
        }
    ctx = out["context"]
    out["trade_off_shows"] = ctx["helps_infilling"] and ctx["hurts_next_token"]
    return out


def verdict_lines(v: dict) -> list[str]:
    if not v:
        return ["(the verdict needs all four objectives)"]
    lines = []
    for knob in ("context", "attention"):
        parts = [
            f"{c['with']} vs {c['without']}: infill accuracy {c['infill_accuracy_gain']:+.3f}, "
            f"next-token loss {c['next_token_loss_change']:+.3f}"
            for c in v[knob]["pairs"]
        ]
        lines.append(f"bidirectional {knob}: " + "; ".join(parts))
    pairs = v["context"]["pairs"]
    better = sum(c["infill_accuracy_gain"] > 0 for c in pairs)
    worse = sum(c["next_token_loss_change"] > 0 for c in pairs)
    counts = (
        f"bidirectional context gives better infilling in {better} of {len(pairs)} pairs and "
        f"worse next-token loss in {worse} of {len(pairs)}"
    )
    if v["trade_off_shows"]:
        lines.append(f"The paper's trade-off SHOWS at this scale: {counts}.")
    else:
        lines.append(f"The paper's trade-off does NOT show at this scale: {counts}.")
    return lines


def table(results: dict) -> str:
    head = (
        "| objective | context | attention | tokens trained | next-token val loss | val bpb | "
        "infill token acc | infill exact match | infill loss | prefix-only token acc | "
        "prefix-only exact match |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name, r in results.items():
        context, attention = OBJECTIVES[name]
        i, p = r["infill"], r["prefix_only"]
        lines.append(
            f"| {name} | {'bi' if context else 'uni'} | {'bi' if attention else 'uni'} | "
            f"{r['tokens']:,} | {r['val_loss']:.3f} | {r['val_bpb']:.3f} | "
            f"{i['token_accuracy']:.3f} ± {i['token_accuracy_se']:.3f} | {i['exact_match']:.3f} | "
            f"{i['loss']:.3f} | {p['token_accuracy']:.3f} ± {p['token_accuracy_se']:.3f} | "
            f"{p['exact_match']:.3f} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    names = list(results)
    x = torch.arange(len(names)).tolist()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    ax = axes[0]
    ax.bar(x, [results[n]["val_loss"] for n in names], color="tab:blue")
    ax.set_title("next-token validation loss (lower is better)")
    ax.set_ylabel("nats / token")
    for ax, metric, title in (
        (axes[1], "token_accuracy", "infilling: span token accuracy"),
        (axes[2], "exact_match", "infilling: exact match of the span"),
    ):
        w = 0.38
        ax.bar(
            [i - w / 2 for i in x],
            [results[n]["infill"][metric] for n in names],
            w,
            label="sentinel prompt",
            color="tab:orange",
        )
        ax.bar(
            [i + w / 2 for i in x],
            [results[n]["prefix_only"][metric] for n in names],
            w,
            label="prefix only",
            color="tab:gray",
        )
        ax.set_title(title + " (higher is better)")
        ax.legend(fontsize=8)
    for ax in axes[:3]:
        ax.set_xticks(x, names)
        ax.grid(axis="y", alpha=0.3)
    top = max(max(results[n][k]["exact_match"] for n in names) for k in ("infill", "prefix_only"))
    axes[2].set_ylim(0, max(0.05, 1.15 * top))  # an all-zero panel still gets a sensible axis
    ax = axes[3]
    for n in names:
        curve = results[n]["val_curve"]
        ax.plot([c[0] / 1e6 for c in curve], [c[1] for c in curve], "o-", label=n)
    ax.set_title("next-token validation loss while training")
    ax.set_xlabel("tokens processed (millions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Artetxe et al. 2022 objectives at equal compute (standard-library corpus)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample(model_fills: dict, tokenizer, piece: tuple[list[int], tuple[int, int]]) -> dict:
    tokens, (start, end) = piece
    return {
        "before": tokenizer.decode(tokens[:start]),
        "span": tokenizer.decode(tokens[start:end]),
        "after": tokenizer.decode(tokens[end:]),
        "greedy_fills": {name: tokenizer.decode(ids) for name, ids in model_fills.items()},
    }
