"""PNG plots of a run, drawn from its metrics.jsonl (never from stdout).

plots/loss.png: training loss and validation loss against tokens seen; steps that a stability
                rewind undid are drawn apart, as faint points, so the line is the path the
                weights took.
plots/bpb.png:  validation bits per byte against tokens seen (comparable across tokenizers).
plots/rewards.png: DPO runs: reward margins and accuracies against steps.
plots/ppo.png:  PPO runs (herd/posttrain/ppo_run.py): mean reward, KL to the reference, the
                policy's clip fraction and approximate KL, and the value loss against iterations.
"""

from __future__ import annotations

from pathlib import Path

from herd.train.runlog import read_jsonl, split_undone


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def plot_undone(ax, undone: list[dict], x: str) -> None:
    """The training losses a stability rewind took back, as faint points beside the kept line."""
    if undone:
        ax.plot(
            [r[x] for r in undone],
            [r["loss"] for r in undone],
            ".",
            color="0.6",
            markersize=3,
            label="steps undone by a rewind",
        )


def plot_run(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train_rows, undone = split_undone([r for r in rows if "loss" in r])
    train = [(r["tokens"], r["loss"]) for r in train_rows]
    val_rows, _ = split_undone([r for r in rows if "val_loss" in r])
    val = [(r["tokens"], r["val_loss"]) for r in val_rows]
    bpb = [(r["tokens"], r["val_bpb"]) for r in val_rows if "val_bpb" in r]
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    if train or val:
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
        plot_undone(ax, undone, "tokens")
        if val:
            ax.plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation loss")
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss (cross-entropy in nats/token; DPO: its loss)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "loss.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "loss.png")
    if bpb:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*zip(*bpb, strict=True), "o-", color="tab:green")
        ax.set_xlabel("tokens")
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "bpb.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "bpb.png")
    rewards = [r for r in train_rows if "rewards/margins" in r]
    if rewards:  # DPO (herd/posttrain/dpo_run.py): TRL's reward metrics
        written.append(_plot_rewards(plt, rewards, val_rows, out_dir / "rewards.png"))
    ppo = [r for r in rows if "kl" in r and "rlhf_reward" in r]
    if ppo:
        written.append(_plot_ppo(plt, ppo, out_dir / "ppo.png"))
    return written


def _plot_ppo(plt, rows: list[dict], path: Path) -> Path:
    """plots/ppo.png: what a PPO run is judged by, one panel each, against iterations: the
    reward R_c (what it maximises), the KL to the reference (what bounds it), the clipped share
    of tokens with the approximate KL of each update, and the value model's loss."""
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        (axes[0, 0], [("reward", "mean reward R_c")], "reward (reward model's probability)"),
        (axes[0, 1], [("kl", "KL(policy || reference)")], "KL per response (nats)"),
        (
            axes[1, 0],
            [("clip_fraction", "clip fraction"), ("approx_kl", "approx. KL(old || new)")],
            "policy update",
        ),
        (axes[1, 1], [("value_loss", "value loss")], "value loss"),
    ]
    for ax, series, ylabel in panels:
        for key, label in series:
            ax.plot(steps, [r[key] for r in rows], lw=1, label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_rewards(plt, rows: list[dict], val_rows: list[dict], path: Path) -> Path:
    """plots/rewards.png: DPO's reward margin and reward accuracy against steps, training pairs
    and (when validated) held-out pairs."""
    fig, (margins, accuracies) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in rows]
    margins.plot(steps, [r["rewards/margins"] for r in rows], lw=1, label="training pairs")
    accuracies.plot(steps, [r["rewards/accuracies"] for r in rows], lw=1, label="training pairs")
    held = [r for r in val_rows if "val_rewards/margins" in r]
    if held:
        at = [r["step"] for r in held]
        margins.plot(at, [r["val_rewards/margins"] for r in held], "o-", label="held out")
        accuracies.plot(at, [r["val_rewards/accuracies"] for r in held], "o-", label="held out")
    margins.set_ylabel("reward margin (beta x log-ratio, chosen - rejected)")
    accuracies.set_ylabel("reward accuracy (chosen reward > rejected)")
    accuracies.set_ylim(-0.05, 1.05)
    for ax in (margins, accuracies):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
