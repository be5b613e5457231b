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


def normalized_update(state: dict, beta1: float, beta2: float, eps: float) -> torch.Tensor | None:
    """u = m_hat / (sqrt(v_hat) + eps) from an AdamW parameter state, or None before step 1."""
    if "exp_avg" not in state:
        return None
    step = float(state["step"])
    m_hat = state["exp_avg"] / (1 - beta1**step)
    v_hat = state["exp_avg_sq"] / (1 - beta2**step)
    return m_hat / (v_hat.sqrt() + eps)


# The sums every statistic is a function of: per tensor once, added up per layer, so the layer
# and matrix views cost one pass over each tensor and no concatenated float64 copies.
SUMS = ("n", "g2", "below", "gp", "p2", "nu", "u1", "u2", "u3", "u4", "uabs", "dg", "d2", "w2")


def tensor_sums(
    grad: torch.Tensor,
    previous: torch.Tensor | None,
    update: torch.Tensor | None,
    delta: torch.Tensor | None,
    weight: torch.Tensor | None,
    threshold: float,
) -> dict[str, float]:
    """The SUMS of one tensor (float64 accumulation over float32 elementwise products); the
    entries of absent inputs are 0."""
    g = grad.detach().float().flatten()

    def total(x):
        return x.sum(dtype=torch.float64)

    zero = torch.zeros((), dtype=torch.float64, device=g.device)
    out = dict.fromkeys(SUMS, zero)
    out.update(n=zero + g.numel(), g2=total(g * g), below=total((g.abs() < threshold).float()))
    if previous is not None:
        pv = previous.detach().float().flatten()
        out.update(gp=total(g * pv), p2=total(pv * pv))
    if update is not None:
        u = update.detach().float().flatten()
        u2 = u * u
        out.update(
            nu=zero + u.numel(),
            u1=total(u),
            u2=total(u2),
            u3=total(u2 * u),
            u4=total(u2 * u2),
            uabs=total(u.abs()),
        )
    if delta is not None and weight is not None:
        d, w = delta.detach().float().flatten(), weight.detach().float().flatten()
        out.update(dg=total(d * g), d2=total(d * d), w2=total(w * w))
    return dict(zip(SUMS, torch.stack([out[k] for k in SUMS]).tolist(), strict=True))


def add_sums(parts: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(p[k] for p in parts) for k in SUMS}


def stats_from_sums(s: dict[str, float], eps: float, has_previous: bool, has_deltas: bool) -> dict:
    """The module docstring's quantities from SUMS (None where undefined)."""
    n = s["n"]
    rms = math.sqrt(s["g2"] / n) if n else float("nan")
    out = {
        "grad_rms": rms,
        "grad_rms_over_eps": rms / eps,
        "frac_below_eps": s["below"] / n if n else float("nan"),
        "grad_time_corr": _ratio(s["gp"], s["g2"] * s["p2"]) if has_previous else None,
    }
    if s["nu"]:
        out["update_bimodality"] = _bimodality_from_moments(
            s["nu"], s["u1"], s["u2"], s["u3"], s["u4"]
        )
        out["update_abs_mean"] = s["uabs"] / s["nu"]
    if has_deltas:
        out["update_grad_cos"] = -_ratio(s["dg"], s["d2"] * s["g2"])
        out["update_weight_ratio"] = math.sqrt(s["d2"] / s["w2"]) if s["w2"] > 0 else None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _ratio(dot: float, squares: float) -> float:
    return dot / math.sqrt(squares) if squares > 0 else float("nan")


def _bimodality_from_moments(n: float, s1: float, s2: float, s3: float, s4: float) -> float:
    """Sarle's coefficient (skew^2 + 1) / kurtosis (not in excess) from the raw power sums
    of a sample."""
    if n < 3:
        return float("nan")
    mean = s1 / n
    m2 = s2 / n - mean * mean
    if m2 <= 1e-12 * (s2 / n):  # all (nearly) equal: no shape to speak of
        return float("nan")
    m3 = s3 / n - 3 * mean * s2 / n + 2 * mean**3
    m4 = s4 / n - 4 * mean * s3 / n + 6 * mean * mean * s2 / n - 3 * mean**4
    skew = m3 / m2**1.5
    return (skew * skew + 1) / (m4 / (m2 * m2))


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
