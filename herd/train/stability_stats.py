"""The quantities of Molybog et al. 2023 ("A Theory on Adam Instability in Large-Scale Machine
Learning"), computed per parameter group from gradients, Adam's moments and the applied update.

The theory: Adam's normalised update u = m_hat / (sqrt(v_hat) + eps) is unimodal around 0 while
successive gradient estimates are correlated; when the gradients of a layer shrink towards eps
and lose their correlation across steps (typically the embedding and early layers), u turns
bimodal near +-1, the update's norm grows and it stops pointing down the gradient, and the loss
diverges. So, per group:

  grad_rms, grad_rms / eps       how close the gradients are to eps
  frac_below_eps                 share of gradient components with |g| < eps_scale * eps
  grad_time_corr                 cosine between this step's gradient and the previous step's
  update_bimodality              Sarle's coefficient (skew^2 + 1) / kurtosis of u: 1/3 for a
                                 normal sample, 5/9 for a uniform one, -> 1 for two spikes at +-1
  update_abs_mean                mean |u| (-> 1 when bimodal at +-1)
  update_grad_cos                cosine between the applied update and the negative gradient
  update_weight_ratio            ||delta theta|| / ||theta||

and one histogram of u over all parameters (the dashboard's heat map).
"""

from __future__ import annotations

import math

import torch

HIST_BINS = 40
HIST_RANGE = 2.0  # u is clipped to [-2, 2] for the histogram


def bimodality_coefficient(x: torch.Tensor) -> float:
    """Sarle's bimodality coefficient (skew^2 + 1) / kurtosis (kurtosis not in excess)."""
    x = x.double().flatten()
    if x.numel() < 3:
        return float("nan")
    centred = x - x.mean()
    var = centred.pow(2).mean()
    if var <= 0:
        return float("nan")
    skew = centred.pow(3).mean() / var.pow(1.5)
    kurt = centred.pow(4).mean() / var.pow(2)
    return float((skew * skew + 1) / kurt)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else float("nan")


def normalized_update(state: dict, beta1: float, beta2: float, eps: float) -> torch.Tensor | None:
    """u = m_hat / (sqrt(v_hat) + eps) from an AdamW parameter state, or None before step 1."""
    if "exp_avg" not in state:
        return None
    step = float(state["step"])
    m_hat = state["exp_avg"] / (1 - beta1**step)
    v_hat = state["exp_avg_sq"] / (1 - beta2**step)
    return m_hat / (v_hat.sqrt() + eps)


def group_stats(
    grads: list[torch.Tensor],
    previous: list[torch.Tensor] | None,
    updates: list[torch.Tensor],
    deltas: list[torch.Tensor],
    params: list[torch.Tensor],
    eps: float,
    eps_scale: float,
) -> dict:
    """All per-group quantities (see the module docstring) for one group's tensors."""
    g = torch.cat([x.detach().double().flatten() for x in grads])
    rms = float(g.pow(2).mean().sqrt())
    out = {
        "grad_rms": rms,
        "grad_rms_over_eps": rms / eps,
        "frac_below_eps": float((g.abs() < eps_scale * eps).double().mean()),
        "grad_time_corr": (
            cosine(g, torch.cat([x.double().flatten() for x in previous]))
            if previous is not None
            else None
        ),
    }
    if updates:
        u = torch.cat([x.double().flatten() for x in updates])
        out["update_bimodality"] = bimodality_coefficient(u)
        out["update_abs_mean"] = float(u.abs().mean())
    if deltas:
        d = torch.cat([x.double().flatten() for x in deltas])
        w = torch.cat([x.detach().double().flatten() for x in params])
        out["update_grad_cos"] = cosine(d, -g)
        out["update_weight_ratio"] = float(d.norm() / w.norm()) if w.norm() > 0 else None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def update_histogram(updates: list[torch.Tensor]) -> list[float]:
    """Share of all normalised-update components in each of HIST_BINS bins over [-2, 2]."""
    u = torch.cat([x.float().flatten() for x in updates]).clamp(-HIST_RANGE, HIST_RANGE)
    counts = torch.histc(u, bins=HIST_BINS, min=-HIST_RANGE, max=HIST_RANGE)
    return (counts / counts.sum()).tolist()


def layer_groups(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Parameters by layer: embed, layers.0 .. layers.N-1, head (final norm and output)."""
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(layer_of(name), []).append((name, p))
    return groups


def layer_of(name: str) -> str:
    """The layer group of a parameter (or of a `tensors` key, its name less `.weight`)."""
    if name.startswith("layers."):
        return ".".join(name.split(".")[:2])
    return "embed" if name.startswith("embed") else "head"
