"""The other scaling fits: IsoFLOP profiles (Hoffmann et al. approach 2), mixed-modal interaction
laws (Aghajanyan et al. 2023) and Llama 3's two-step downstream prediction.

IsoFLOP: runs are grouped by compute budget (equal C = 6 N D up to 5%); each group's loss is fitted
as a parabola in log N, whose minimum is that budget's N_opt; N_opt(C) and D_opt(C) = C / (6 N_opt)
are then fitted as power laws a C^b by linear regression in log space.

Mixed-modal: each modality i gets its own Chinchilla law L_i(N, D_i); a run on the pair (i, j)
with D_i and D_j tokens of each is modelled as
    L(N, D_i, D_j) = [L_i(N, D_i) + L_j(N, D_j)] / 2 - C_ij + A_ij / N^a_ij + B_ij / (D_i + D_j)^b_ij.
C_ij is the interaction at infinite scale: positive means the modalities help each other
(synergy: the bimodal loss is below the average of the unimodal ones); the A_ij and B_ij terms say
how that changes with model size and data. The five interaction parameters are fitted by least
squares on log-loss from a grid of starts, the unimodal laws being fitted first.

Downstream (Llama 3 paper, section 3.2.1): (1) the normalised negative log-likelihood of the
correct answer against training compute, NLL(C) = E + A / C^alpha; (2) accuracy against that NLL,
a sigmoid acc = low + (high - low) / (1 + exp(k (NLL - x0))). Chaining the two predicts accuracy
at a compute budget never trained.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import curve_fit, least_squares

from herd.errors import HerdError
from herd.scaling import chinchilla
from herd.scaling.chinchilla import chinchilla_flops

# C_ij, log A_ij, alpha_ij, log B_ij, beta_ij: exponents non-negative, the rest in a range wide
# enough for any loss in nats (an unbounded fit can trade a huge C against huge A and B)
PAIR_BOUNDS = ([-10.0, -20.0, 0.0, -20.0, 0.0], [10.0, 40.0, 3.0, 40.0, 3.0])


def group_by_flops(flops: np.ndarray, tolerance: float = 0.05) -> list[np.ndarray]:
    """Indices of runs whose compute agrees within `tolerance` (relative), largest C last."""
    order = np.argsort(flops)
    groups: list[list[int]] = []
    for i in order:
        if groups and flops[i] <= flops[groups[-1][0]] * (1 + tolerance):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(g) for g in groups]


def isoflop(n, d, loss, flops=None) -> dict:
    """Approach 2: per-budget parabola minima, then power laws N_opt = a C^b, D_opt = a' C^b'."""
    n, d, loss = chinchilla.check_points(n, d, loss, minimum=3)
    c = np.asarray(flops, dtype=float) if flops is not None else chinchilla_flops(n, d)
    profiles = []
    for idx in group_by_flops(c):
        if len(idx) < 3:
            continue
        x = np.log(n[idx])
        k2, k1, k0 = np.polyfit(x, loss[idx], 2)
        if k2 <= 0:  # no minimum inside: the budget's sizes do not bracket the optimum
            continue
        x_opt = -k1 / (2 * k2)
        budget = float(np.exp(np.mean(np.log(c[idx]))))
        profiles.append(
            {
                "flops": budget,
                "params_opt": float(np.exp(x_opt)),
                "tokens_opt": budget / (6 * float(np.exp(x_opt))),
                "loss_opt": float(k0 + k1 * x_opt + k2 * x_opt**2),
                "parabola": [float(k2), float(k1), float(k0)],
                "points": idx.tolist(),
            }
        )
    if len(profiles) < 2:
        raise HerdError(
            f"isoFLOP fit: {len(profiles)} compute budget(s) with 3+ sizes around a minimum; "
            "need 2 or more (run 3+ model sizes at each of 2+ budgets)"
        )
    lc = np.log([p["flops"] for p in profiles])
    b_n, a_n = np.polyfit(lc, np.log([p["params_opt"] for p in profiles]), 1)
    b_d, a_d = np.polyfit(lc, np.log([p["tokens_opt"] for p in profiles]), 1)
    return {
        "profiles": profiles,
        "params_opt": {"coefficient": float(np.exp(a_n)), "exponent": float(b_n)},
        "tokens_opt": {"coefficient": float(np.exp(a_d)), "exponent": float(b_d)},
    }


def fit_mixed_modal(rows: list[dict]) -> dict:
    """rows: {'params', 'tokens', 'loss', 'modality'} with modality 'i' or 'i+j'; bimodal rows
    carry 'tokens_i' and 'tokens_j' (or an even split of 'tokens')."""
    uni: dict[str, list[dict]] = {}
    bi: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        mods = str(r["modality"]).split("+")
        if len(mods) == 1:
            uni.setdefault(mods[0], []).append(r)
        elif len(mods) == 2:
            bi.setdefault((mods[0], mods[1]), []).append(r)
        else:
            raise HerdError(f"modality '{r['modality']}': expected 'name' or 'name+name'")
    laws = {}
    for mod, rs in sorted(uni.items()):
        result = chinchilla.fit(
            [r["params"] for r in rs],
            [r["tokens"] for r in rs],
            [r["loss"] for r in rs],
            bootstrap=0,
        )
        laws[mod] = result["law"]
    pairs = {}
    for (i, j), rs in sorted(bi.items()):
        for m in (i, j):
            if m not in laws:
                raise HerdError(f"pair {i}+{j}: no unimodal runs for '{m}' to fit its own law")
        n = np.array([r["params"] for r in rs], dtype=float)
        di = np.array([r.get("tokens_i", r["tokens"] / 2) for r in rs], dtype=float)
        dj = np.array([r.get("tokens_j", r["tokens"] / 2) for r in rs], dtype=float)
        loss = np.array([r["loss"] for r in rs], dtype=float)
        chinchilla.check_points(n, di + dj, loss, minimum=6, what=f"{i}+{j} runs")
        base = (laws[i].loss(n, di) + laws[j].loss(n, dj)) / 2

        def residual(t, n=n, di=di, dj=dj, base=base, loss=loss):
            c, log_a, alpha, log_b, beta = t
            pred = base - c + np.exp(log_a) / n**alpha + np.exp(log_b) / (di + dj) ** beta
            return np.log(np.maximum(pred, 1e-9)) - np.log(loss)

        best = None
        with np.errstate(all="ignore"):  # far-off starts overflow before the solver pulls them back
            for start in itertools.product(
                (-0.5, 0.0, 0.5), (0.0, 5.0), (0.2, 0.5), (0.0, 5.0), (0.2, 0.5)
            ):
                res = least_squares(residual, start, bounds=PAIR_BOUNDS, max_nfev=4000)
                if best is None or res.cost < best.cost:
                    best = res
        c, log_a, alpha, log_b, beta = best.x
        pairs[f"{i}+{j}"] = {
            "C": float(c),
            "A": float(np.exp(log_a)),
            "alpha": float(alpha),
            "B": float(np.exp(log_b)),
            "beta": float(beta),
            "synergy": bool(c > 0),
            "rmse_log": float(np.sqrt(np.mean(best.fun**2))),
        }
    return {"unimodal": {m: law.to_dict() for m, law in laws.items()}, "pairs": pairs}


def fit_downstream(flops, nll, accuracy, chance: float = 0.25) -> dict:
    """Llama 3's two steps: NLL(C) = E + A / C^alpha, then accuracy = sigmoid in NLL."""
    c = np.asarray(flops, dtype=float)
    nll = np.asarray(nll, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    if len(c) < 4:
        raise HerdError(f"downstream fit: {len(c)} runs, fewer than the 4 needed")
    if np.any(~np.isfinite(c)) or np.any(c <= 0) or np.any(~np.isfinite(nll)):
        raise HerdError("downstream fit: flops must be positive and NLL values finite")
    scale = c.max()

    def nll_law(x, e, log_a, alpha):
        return e + np.exp(log_a) * (x / scale) ** (-alpha)

    try:
        p1, _ = curve_fit(nll_law, c, nll, p0=(nll.min() * 0.8, 0.0, 0.3), maxfev=20000)
    except RuntimeError:
        raise HerdError(
            "downstream fit: NLL against compute does not follow E + A/C^alpha "
            "on these runs (no convergence)"
        ) from None

    def sigmoid(x, high, k, x0):
        return chance + (high - chance) / (1 + np.exp(k * (x - x0)))

    try:
        p2, _ = curve_fit(
            sigmoid,
            nll,
            acc,
            p0=(min(1.0, acc.max() + 0.05), 5.0, float(np.median(nll))),
            maxfev=20000,
        )
    except RuntimeError:
        raise HerdError(
            "downstream fit: accuracy against NLL does not follow a sigmoid on these "
            "runs (no convergence)"
        ) from None

    def predict(flops_new):
        x = nll_law(np.asarray(flops_new, dtype=float), *p1)
        return x, sigmoid(x, *p2)

    return {
        "nll_law": {
            "E": float(p1[0]),
            "A": float(np.exp(p1[1])),
            "alpha": float(p1[2]),
            "flops_scale": float(scale),
        },
        "sigmoid": {"low": chance, "high": float(p2[0]), "k": float(p2[1]), "x0": float(p2[2])},
        "predict": predict,
    }
