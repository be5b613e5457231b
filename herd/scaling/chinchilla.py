"""The Chinchilla parametric law L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022).

Fitting follows the paper's approach 3 (section 3.3, appendix D.2): minimise the Huber loss
(delta = 1e-3) between the predicted and observed log-loss, with the prediction written as
log L = LSE(a - alpha log N, b - beta log D, e) for A = exp(a), B = exp(b), E = exp(e), using L-BFGS
from a grid of initialisations. Here the whole grid is scored in one vectorised pass and L-BFGS
runs from the best starts (the objective is cheap to evaluate, L-BFGS is not). Intervals come
from a bootstrap over the points.

With C = 6 N D, the compute-optimal allocation is (appendix D.2)
    N_opt(C) = G (C / 6)^(beta / (alpha + beta)),  D_opt(C) = G^-1 (C / 6)^(alpha / (alpha + beta)),
    G = (alpha A / (beta B))^(1 / (alpha + beta)).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from herd.errors import HerdError

# Hoffmann et al. 2022, equation (10): the law fitted on their runs.
PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
DELTA = 1e-3
# a, b, e free; the exponents non-negative (a negative one would mean more parameters or data
# hurt, and makes the compute-optimal allocation undefined)
BOUNDS = [(None, None), (None, None), (None, None), (0.0, 5.0), (0.0, 5.0)]


@dataclass
class ChinchillaLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal(self, flops):
        """(N_opt, D_opt) for compute C = 6 N D."""
        c = np.asarray(flops, dtype=float)
        a, b = self.alpha, self.beta
        if a <= 1e-9 or b <= 1e-9:
            raise HerdError(
                f"the fitted law has alpha {a:.3g}, beta {b:.3g}: with a zero exponent there is "
                "no compute-optimal allocation (the points do not constrain it; add runs)"
            )
        g = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        return g * (c / 6.0) ** (b / (a + b)), (1.0 / g) * (c / 6.0) ** (a / (a + b))

    def to_dict(self) -> dict:
        return asdict(self)


def chinchilla_flops(params: float, tokens: float) -> float:
    """C = 6 N D: the compute of N parameters trained on D tokens, in scaling-law fits and plots
    (numbers or numpy arrays). Runs report their exact count (`ModelConfig.flops_per_token`)."""
    return 6.0 * params * tokens


def published() -> ChinchillaLaw:
    return ChinchillaLaw(**PUBLISHED)


def check_points(n, d, loss, minimum: int, what: str = "points"):
    """Arrays of finite positive values, at least `minimum` of them, or a one-line error."""
    arrays = [np.asarray(x, dtype=float) for x in (n, d, loss)]
    for name, x in zip(("params", "tokens", "loss"), arrays, strict=True):
        if not np.all(np.isfinite(x)):
            raise HerdError(f"{name}: {int(np.sum(~np.isfinite(x)))} value(s) are NaN or infinite")
        if np.any(x <= 0):
            raise HerdError(f"{name}: every value must be positive, found {float(x.min()):g}")
    if len(arrays[0]) < minimum:
        raise HerdError(
            f"{len(arrays[0])} {what}, fewer than the {minimum} needed to fit this law "
            f"(it has {minimum - 1} parameters)"
        )
    return arrays


def _objective(theta, log_n, log_d, log_loss):
    a, b, e, alpha, beta = theta
    pred = logsumexp(
        np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0
    )
    return float(np.sum(huber(DELTA, pred - log_loss)))


def _grid():
    values = itertools.product(
        np.arange(0, 30, 5),
        np.arange(0, 30, 5),
        np.arange(-1, 1.5, 0.5),
        np.arange(0, 2.5, 0.5),
        np.arange(0, 2.5, 0.5),
    )
    return np.array(list(values), dtype=float)  # a, b, e, alpha, beta: 6 * 6 * 5 * 5 * 5 = 4,500


def _fit_once(log_n, log_d, log_loss, starts: np.ndarray) -> np.ndarray:
    best, best_value = None, np.inf
    for theta0 in starts:
        # Tight tolerances: near a good fit the Huber objective is tiny (quadratic in residuals
        # below delta), and the default gradient tolerance would stop L-BFGS almost at once.
        res = minimize(
            _objective,
            theta0,
            args=(log_n, log_d, log_loss),
            method="L-BFGS-B",
            bounds=BOUNDS,
            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12},
        )
        if res.fun < best_value:
            best, best_value = res.x, res.fun
    return best


def fit(n, d, loss, bootstrap: int = 100, seed: int = 0, starts: int = 8) -> dict:
    """Fit the law; returns {'law', 'intervals' (95%, per parameter), 'n_points'}."""
    n, d, loss = check_points(n, d, loss, minimum=6)
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    grid = _grid()
    # Score every grid point at once: [grid, points] predictions.
    pred = logsumexp(
        np.stack(
            [
                grid[:, :1] - grid[:, 3:4] * log_n,
                grid[:, 1:2] - grid[:, 4:5] * log_d,
                np.repeat(grid[:, 2:3], len(log_n), axis=1),
            ]
        ),
        axis=0,
    )
    scores = huber(DELTA, pred - log_loss).sum(axis=1)
    top = grid[np.argsort(scores)[:starts]]
    theta = _fit_once(log_n, log_d, log_loss, top)
    law = _to_law(theta)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(n), len(n))
        samples.append(_fit_once(log_n[idx], log_d[idx], log_loss[idx], [theta]))
    intervals = {}
    if samples:
        laws = [_to_law(s).to_dict() for s in samples]
        for key in law.to_dict():
            values = np.array([x[key] for x in laws])
            intervals[key] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return {"law": law, "intervals": intervals, "n_points": len(n), "bootstrap": samples}


def _to_law(theta) -> ChinchillaLaw:
    a, b, e, alpha, beta = (float(x) for x in theta)
    return ChinchillaLaw(
        E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta
    )


def optimal_with_intervals(result: dict, flops: float) -> dict:
    """N_opt, D_opt at `flops` from the fit, with 95% bootstrap intervals."""
    n_opt, d_opt = result["law"].optimal(flops)
    out = {"flops": flops, "params": float(n_opt), "tokens": float(d_opt)}
    if result.get("bootstrap"):
        ns, ds = zip(*(_to_law(s).optimal(flops) for s in result["bootstrap"]), strict=True)
        out["params_ci95"] = [float(np.percentile(ns, 2.5)), float(np.percentile(ns, 97.5))]
        out["tokens_ci95"] = [float(np.percentile(ds, 2.5)), float(np.percentile(ds, 97.5))]
    return out
