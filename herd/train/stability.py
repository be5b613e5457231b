"""Training stability: the Adam-instability monitor, the loss-spike responses and their state.

Monitor (`[stability] every`): on every `every`-th step the trainer keeps the previous step's
gradients and the weights before the update, then records per layer (and, under `tensors`, per
weight matrix) the statistics of herd/train/stability_stats.py (gradient RMS against eps, share
of components at eps scale, gradient correlation across the two steps, bimodality of Adam's
normalised update, update/gradient cosine, update/weight ratio) and a histogram of the normalised
update, as one line of `stability.jsonl`. Other steps do no extra work and no host
synchronisation. Under FSDP the statistics are those of each process's shards (rank 0's are
written). The gradient snapshot is part of a checkpoint, so a resumed run writes the records the
uninterrupted one would.

Detector (herd/train/spikes.py, on the device): the loss of every step is compared with the
median and the median absolute deviation of the previous `window` accepted losses; a spike is a
robust z-score above `threshold` that also exceeds the median by `min_rise`. Early warning
(`instability_warning` events): a monitored layer or matrix whose normalised update turns bimodal
near +-1 (Sarle's coefficient above 5/9, the uniform distribution's, with mean |u| above 0.3)
while its gradients lose their step-to-step correlation (below 0.2) — the precursor the theory
names.

Responses (`response`, each logged in events.jsonl): `log` only records; `skip` drops the step's
update (PaLM's remedy, one batch at a time; at most `max_skips` spiking steps in a row, then the
updates apply and the detector's window follows the loss); `rewind` restores the newest intact
checkpoint from before the spike and skips the next `skip_batches` batches (k times as many on the
k-th rewind, since the replay from a checkpoint is deterministic) (PaLM restarted ~100 steps
before a spike and skipped 200-500 batches); `lower_lr` multiplies the learning rate by
`lr_factor` for `lr_steps` steps; `eps` multiplies Adam's eps by `eps_factor` (the theory's fix:
an eps above the gradients' scale keeps the update unimodal). `log`, `skip` and `rewind` cost no
host sync: the skip is decided on the device, and a rewind happens when the trainer next reads
the verdicts (a log, monitor or checkpoint step, so never after a checkpoint taken past the
spike). `lower_lr` and `eps` change the optimizer from the host, so the trainer reads every
step's verdict under them. The multipliers are part of the checkpoint, so resume stays exact.
"""

from __future__ import annotations

import torch

from herd.errors import HerdError
from herd.train import stability_stats as stats
from herd.train.config import StabilityConfig

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
        if config.every < 2 or config.window < 5 or config.max_skips < 1:
            raise HerdError(
                "stability.every must be >= 2, stability.window >= 5 and stability.max_skips >= 1"
            )
        self.config = config
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

    def drop_gradients(self) -> None:
        """Forget the kept gradients (their step's update was skipped)."""
        self._previous = None

    def gradient_snapshot(self) -> dict[str, torch.Tensor]:
        """The kept gradients as flat tensors ("group/i"), for a checkpoint; {} when none."""
        return {
            f"{k}/{i}": t.detach().cpu().contiguous()
            for k, ts in (self._previous or {}).items()
            for i, t in enumerate(ts)
        }

    def load_gradient_snapshot(self, tensors: dict[str, torch.Tensor], groups) -> None:
        """Restore `gradient_snapshot` if it fits this process's parameters (as many processes
        as the run that wrote it); otherwise the next record has no gradient correlation."""
        self._previous = None
        previous = {}
        for key, ps in groups.items():
            live = [_local(p) for _, p in ps if p.requires_grad]
            kept = [tensors.get(f"{key}/{i}") for i in range(len(live))]
            if all(t is None for t in kept):
                continue
            if any(t is None or t.shape != p.shape for t, p in zip(kept, live, strict=True)):
                return
            previous[key] = [t.to(p.device, p.dtype) for t, p in zip(kept, live, strict=True)]
        self._previous = previous or None

    def warnings(self, record: dict, window_full: bool) -> list[str]:
        """Layers and matrices showing the instability's precursor in a monitored record.

        Silent until the detector's window has filled, like the detector: Adam's first updates
        are sign-like by construction (at step 1, u = g / |g|), which is not the instability."""
        if not window_full:
            return []
        out = []
        for key, g in [*record["groups"].items(), *record.get("tensors", {}).items()]:
            corr = g.get("grad_time_corr")
            if bimodal_near_one(g) and corr is not None and corr < DECORRELATED:
                out.append(key)
        return out

    # --- responses ------------------------------------------------------------------------

    @property
    def drops_spikes(self) -> bool:
        """Whether a spiking step's update is skipped on the device (skip, rewind)."""
        return self.config.response in ("skip", "rewind")

    @property
    def acts_from_host(self) -> bool:
        """Whether the response changes the optimizer from the host after a spike."""
        return self.config.enabled and self.config.response in ("lower_lr", "eps")

    def response_for(self) -> str:
        """What to do about a spike now (rewind turns into skip after max_rewinds)."""
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
            "lr_multiplier": self.lr_multiplier,
            "lr_until": self.lr_until,
            "eps_multiplier": self.eps_multiplier,
            "rewinds": self.rewinds,
        }

    def load_state_dict(self, state: dict, optimizer, base_eps: float) -> None:
        self.lr_multiplier = float(state.get("lr_multiplier", 1.0))
        self.lr_until = int(state.get("lr_until", -1))
        self.rewinds = int(state.get("rewinds", 0))
        self.eps_multiplier = float(state.get("eps_multiplier", 1.0))
        self.set_eps(optimizer, base_eps)
