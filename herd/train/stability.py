"""Training stability: the Adam-instability monitor, a loss-spike detector and the responses.

Monitor (`[stability] every`): on every `every`-th step the trainer keeps the previous step's
gradients and the weights before the update, then records per layer (and, under `tensors`, per
weight matrix) the statistics of herd/train/stability_stats.py (gradient RMS against eps, share
of components at eps scale, gradient correlation across the two steps, bimodality of Adam's
normalised update, update/gradient cosine, update/weight ratio) and a histogram of the normalised
update, as one line of
`stability.jsonl`. Other steps do no extra work and no host synchronisation. Under FSDP the
statistics are those of each process's shards (rank 0's are written).

Detector: the loss of every step (already on the host for the progress bar) is compared with the
median and the median absolute deviation of the previous `window` accepted losses; a spike is a
robust z-score above `threshold` that also exceeds the median by `min_rise` (so a flat window
with a tiny MAD does not fire on noise). Early warning (`instability_warning` events): a monitored
layer or matrix whose normalised update turns bimodal near +-1 (Sarle's coefficient above 5/9, the
uniform distribution's, with mean |u| above 0.3) while its gradients lose their step-to-step
correlation (below 0.2) — the precursor the theory names.

Responses (`response`, each logged in events.jsonl): `log` only records; `skip` drops the step's
update (PaLM's remedy, one batch at a time); `rewind` restores the newest intact checkpoint from
before the spike and skips the next `skip_batches` batches (k times as many on the k-th rewind,
since the replay from a checkpoint is deterministic) (PaLM restarted ~100 steps before a
spike and skipped 200-500 batches); `lower_lr` multiplies the learning rate by `lr_factor` for
`lr_steps` steps; `eps` multiplies Adam's eps by `eps_factor` (the theory's fix: an eps above
the gradients' scale keeps the update unimodal). The multipliers are part of the checkpoint, so
resume stays exact.
"""

from __future__ import annotations

import statistics

import torch

from herd.config import StabilityConfig
from herd.errors import HerdError
from herd.train import stability_stats as stats

RESPONSES = ("log", "skip", "rewind", "lower_lr", "eps")


def _local(t):
    """This process's shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


BIMODAL = 5 / 9
DECORRELATED = 0.2
NEAR_ONE = 0.3  # mean |u| above which a bimodal update counts as near +-1


def bimodal_near_one(statistics: dict) -> bool:
    """A layer's or matrix's update bimodal near +-1: Sarle's coefficient above 5/9 and mean |u|
    above NEAR_ONE (the coefficient does not see scale: the theory's state is two modes near
    +-1, not a two-humped spread of tiny updates, which small vectors show by chance)."""
    return (statistics.get("update_bimodality") or 0) > BIMODAL and (
        statistics.get("update_abs_mean") or 0
    ) > NEAR_ONE


class Stability:
    def __init__(self, config: StabilityConfig) -> None:
        if config.response not in RESPONSES:
            raise HerdError(
                f"stability.response '{config.response}': expected one of {', '.join(RESPONSES)}"
            )
        if config.every < 2 or config.window < 5:
            raise HerdError("stability.every must be >= 2 and stability.window >= 5")
        self.config = config
        self.losses: list[float] = []
        self.lr_multiplier, self.lr_until = 1.0, -1
        self.eps_multiplier = 1.0
        self.rewinds = 0
        self._previous: dict[str, list[torch.Tensor]] | None = None
        self._before: dict[str, list[torch.Tensor]] | None = None

    # --- cadence --------------------------------------------------------------------------

    def snapshot_step(self, step: int) -> bool:
        """True on the step before a monitored one: keep its gradients."""
        return self.config.enabled and (step + 2) % self.config.every == 0

    def monitor_step(self, step: int) -> bool:
        return self.config.enabled and (step + 1) % self.config.every == 0

    def keep_gradients(self, groups) -> None:
        self._previous = {
            k: [_local(p.grad).detach().clone() for _, p in ps if p.grad is not None]
            for k, ps in groups.items()
        }

    def keep_weights(self, groups) -> None:
        self._before = {k: [_local(p).detach().clone() for _, p in ps] for k, ps in groups.items()}

    def measure(
        self, step: int, groups, optimizer, loss: float, max_loss: float, grad_norm: float
    ) -> dict:
        """The monitored quantities after the optimizer step (gradients still attached)."""
        group0 = optimizer.param_groups[0]
        beta1, beta2 = group0["betas"]
        eps = group0["eps"]
        threshold = self.config.eps_scale * eps
        per_group, per_tensor, all_updates = {}, {}, []
        for key, ps in groups.items():
            before = (self._before or {}).get(key)  # aligned with ps
            previous = (self._previous or {}).get(key)  # aligned with ps that had gradients
            live = [(i, name, p) for i, (name, p) in enumerate(ps) if p.grad is not None]
            if not live:
                continue
            if previous is not None and len(previous) != len(live):
                previous = None
            parts = []
            for j, (i, name, p) in enumerate(live):
                u = stats.normalized_update(optimizer.state.get(p, {}), beta1, beta2, eps)
                weight = _local(p)
                part = stats.tensor_sums(
                    _local(p.grad),
                    None if previous is None else previous[j],
                    u,
                    None if before is None else weight.detach() - before[i],
                    weight,
                    threshold,
                )
                parts.append(part)
                if u is not None:
                    all_updates.append(u)
                # Each weight matrix on its own too: a layer's statistics mix its tensors, and
                # the update that turns bimodal first is often one matrix's (attention q/k in
                # experiments/adam_instability.py) while the layer as a whole still looks calm.
                if p.dim() >= 2 and u is not None:
                    per_tensor[name.removesuffix(".weight")] = stats.stats_from_sums(
                        part, eps, previous is not None, before is not None
                    )
            per_group[key] = stats.stats_from_sums(
                stats.add_sums(parts), eps, previous is not None, before is not None
            )
        self._previous = self._before = None
        record = {
            "step": step + 1,
            "loss": loss,
            "max_loss": max_loss,
            "grad_norm": grad_norm,  # before clipping
            "eps": eps,
            "groups": per_group,
            "tensors": per_tensor,
        }
        if all_updates:
            record["update_histogram"] = stats.update_histogram(all_updates)
        return record

    def warnings(self, record: dict) -> list[str]:
        """Layers and matrices showing the instability's precursor in a monitored record.

        Silent until the detector's window has filled, like the detector: Adam's first updates
        are sign-like by construction (at step 1, u = g / |g|), which is not the instability."""
        if len(self.losses) < self.config.window:
            return []
        out = []
        for key, g in [*record["groups"].items(), *record.get("tensors", {}).items()]:
            corr = g.get("grad_time_corr")
            if bimodal_near_one(g) and corr is not None and corr < DECORRELATED:
                out.append(key)
        return out

    # --- spikes ---------------------------------------------------------------------------

    def check(self, loss: float) -> dict | None:
        """{'median', 'mad', 'z'} when `loss` is a spike against the trailing window."""
        cfg = self.config
        if not cfg.enabled or len(self.losses) < cfg.window:
            return None
        window = self.losses[-cfg.window :]
        median = statistics.median(window)
        mad = statistics.median(abs(x - median) for x in window) * 1.4826
        z = (loss - median) / mad if mad > 0 else (float("inf") if loss > median else 0.0)
        if z > cfg.threshold and loss > median * (1 + cfg.min_rise):
            return {"median": median, "mad": mad, "z": z}
        return None

    def accept(self, loss: float) -> None:
        """A step whose loss enters the window (spikes that were skipped or rewound do not)."""
        self.losses.append(loss)
        del self.losses[: -4 * self.config.window]

    def response_for(self, spike: dict | None) -> str | None:
        if spike is None:
            return None
        response = self.config.response
        if response == "rewind" and self.rewinds >= self.config.max_rewinds:
            return "skip"
        return response

    def lower_lr(self, step: int) -> None:
        self.lr_multiplier = self.config.lr_factor
        self.lr_until = step + self.config.lr_steps

    def lr_factor(self, step: int) -> float:
        return self.lr_multiplier if step < self.lr_until else 1.0

    def raise_eps(self, optimizer, base_eps: float) -> None:
        self.eps_multiplier *= self.config.eps_factor
        self.set_eps(optimizer, base_eps)

    def set_eps(self, optimizer, base_eps: float) -> None:
        """eps = the configured eps times the multiplier (absolute, so reloading is idempotent)."""
        for group in optimizer.param_groups:
            group["eps"] = base_eps * self.eps_multiplier

    # --- checkpointed state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "losses": self.losses,
            "lr_multiplier": self.lr_multiplier,
            "lr_until": self.lr_until,
            "eps_multiplier": self.eps_multiplier,
            "rewinds": self.rewinds,
        }

    def load_state_dict(self, state: dict, optimizer, base_eps: float) -> None:
        self.losses = list(state.get("losses", []))
        self.lr_multiplier = float(state.get("lr_multiplier", 1.0))
        self.lr_until = int(state.get("lr_until", -1))
        self.rewinds = int(state.get("rewinds", 0))
        self.eps_multiplier = float(state.get("eps_multiplier", 1.0))
        self.set_eps(optimizer, base_eps)
