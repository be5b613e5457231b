"""The loss-spike detector and the step's verdict, computed on the device without a host sync.

Every step's loss is compared with the median and the median absolute deviation of the last
`window` accepted losses: a spike is a robust z-score above `threshold` that also exceeds the
median by `min_rise` (so a flat window with a tiny MAD does not fire on noise). The window lives
on the device as a ring buffer, so the verdict of a step (skip its update or not) is a tensor the
optimizer step reads directly (`found_inf` of torch's fused AdamW: a skipped step leaves weights,
moments and step counts as they were); the host reads the verdicts in one transfer at the
trainer's next log, monitor or checkpoint step and logs the events then.

A step is skipped when its gradient norm or loss is not finite, or when it spikes and the response
drops spikes (`skip`, `rewind`). Skips are bounded: after `max_skips` consecutive spiking steps the
updates apply again and their losses enter the window, which so follows the loss to its new level
(a run whose loss rose for good would otherwise read every later step as a spike and never update
again). Only accepted steps (not skipped) enter the window.
"""

from __future__ import annotations

import torch

from herd.train.config import StabilityConfig

# One float per field and step; the host reads a stack of these rows in one transfer.
FIELDS = (
    "loss",
    "max_loss",
    "grad_norm",
    "skipped",
    "nonfinite",
    "spike",
    "limited",
    "z",
    "median",
    "mad",
    "window_full",
)
MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution times this is its standard deviation


def _median(x: torch.Tensor) -> torch.Tensor:
    """The mean of the middle two of an even count, as `statistics.median` takes it."""
    ordered = x.sort().values
    n = ordered.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


class SpikeDetector:
    def __init__(self, config: StabilityConfig, drops_spikes: bool, device: torch.device) -> None:
        self.config = config
        self.drops_spikes = drops_spikes  # the response skips a spiking step's update
        f64 = {"dtype": torch.float64, "device": device}
        self.window = torch.zeros(config.window, **f64)
        self.filled = torch.zeros((), dtype=torch.long, device=device)
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.streak = torch.zeros((), dtype=torch.long, device=device)  # consecutive spikes

    def score(self, loss: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(spike, z, median, mad) of `loss` against the window (no spike until it is full)."""
        cfg = self.config
        median = _median(self.window)
        mad = _median((self.window - median).abs()) * MAD_TO_SIGMA
        above = torch.where(loss > median, torch.inf, 0.0).to(torch.float64)
        z = torch.where(mad > 0, (loss - median) / mad.clamp(min=1e-300), above)
        full = self.filled >= cfg.window
        spike = full & (z > cfg.threshold) & (loss > median * (1 + cfg.min_rise))
        return spike & cfg.enabled, z, median, mad

    def observe(
        self, loss: torch.Tensor, max_loss: torch.Tensor, grad_norm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's verdict: (skip as a float 0/1 tensor for the optimizer, its FIELDS row).
        Takes an accepted loss into the window."""
        loss, norm = loss.double(), grad_norm.detach().double()
        full = self.filled >= self.config.window  # the window this step is judged against
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        spike, z, median, mad = self.score(loss)
        spike = spike & finite
        limited = spike & self.drops_spikes & (self.streak >= self.config.max_skips)
        skipped = ~finite | (spike & ~limited & self.drops_spikes)
        self.streak = torch.where(spike, self.streak + 1, 0)
        accepted = ~skipped
        # index_copy_/gather with a one-element index tensor: indexing with a 0-d tensor would
        # read it back to the host
        at = self.cursor.view(1)
        kept = torch.where(accepted, loss, self.window.gather(0, at).squeeze(0))
        self.window.index_copy_(0, at, kept.view(1))
        step = accepted.long()
        self.cursor = (self.cursor + step) % self.config.window
        self.filled = (self.filled + step).clamp(max=self.config.window)
        row = torch.stack(
            [
                loss,
                max_loss.double(),
                norm,
                skipped.double(),
                (~finite).double(),
                spike.double(),
                limited.double(),
                z,
                median,
                mad,
                full.double(),
            ]
        )
        return skipped.float(), row

    # --- checkpointed state -----------------------------------------------------------------

    def state_dict(self) -> dict:
        """The window's losses, oldest first, and the current run of spikes (a host sync)."""
        filled, cursor = int(self.filled), int(self.cursor)
        values = self.window.tolist()
        ordered = values[cursor:] + values[:cursor] if filled == len(values) else values[:filled]
        return {"losses": ordered, "spike_streak": int(self.streak)}

    def load_state_dict(self, state: dict) -> None:
        losses = list(state.get("losses", []))[-self.config.window :]
        self.window.zero_()
        if losses:
            self.window[: len(losses)] = torch.tensor(losses, dtype=torch.float64)
        n = len(losses)
        self.filled.fill_(n)
        self.cursor.fill_(n % self.config.window)
        self.streak.fill_(int(state.get("spike_streak", 0)))
