"""Scaling fits against known answers: the published Chinchilla law recovered from noisy samples,
compute-optimal allocation against brute-force minimisation, IsoFLOP exponents, mixed-modal
interaction terms and the downstream two-step fit recovered from synthetic data, FLOP counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from herd import HerdError
from herd.model.presets import preset
from herd.scaling import chinchilla, fits
from herd.scaling.plan import llama_shape, plan

LAW = chinchilla.published()


def _grid(sizes=40, budgets=17):
    """A Chinchilla-like grid: 40M-16B parameters, 1e18-1e22 FLOPs, 1-1000 tokens/parameter."""
    n, c = np.meshgrid(np.geomspace(4e7, 1.6e10, sizes), np.geomspace(1e18, 1e22, budgets))
    n, c = n.ravel(), c.ravel()
    d = c / (6 * n)
    keep = (d / n > 1) & (d / n < 1000)
    return n[keep], d[keep]


def test_recovers_published_chinchilla_law_from_noisy_points():
    n, d = _grid()
    rng = np.random.default_rng(0)
    loss = LAW.loss(n, d) * np.exp(rng.normal(0, 0.01, len(n)))  # 1% multiplicative noise
    result = chinchilla.fit(n, d, loss, bootstrap=0)
    got = result["law"]
    for name, value in (("alpha", 0.34), ("beta", 0.28), ("E", 1.69)):
        assert abs(getattr(got, name) / value - 1) < 0.05, name


def test_bootstrap_intervals_cover_the_fit():
    n, d = _grid(12, 6)
    loss = LAW.loss(n, d) * np.exp(np.random.default_rng(1).normal(0, 0.005, len(n)))
    result = chinchilla.fit(n, d, loss, bootstrap=10)
    for lo, hi in result["intervals"].values():
        assert lo <= hi
    optimum = chinchilla.optimal_with_intervals(result, 1e22)
    assert optimum["params_ci95"][0] <= optimum["params_ci95"][1]


@pytest.mark.parametrize("flops", [1e21, 1e24])
def test_plan_matches_brute_force_optimum(flops):
    """N_opt from the closed form equals the minimum of L(N, C / 6N) found numerically."""
    res = minimize_scalar(
        lambda x: float(LAW.loss(np.exp(x), flops / (6 * np.exp(x)))),
        bounds=(np.log(1e6), np.log(1e14)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    n_num = np.exp(res.x)
    d_num = flops / (6 * n_num)
    result = plan(LAW, flops)
    assert result["params_opt"] == pytest.approx(n_num, rel=1e-3)
    assert result["tokens_per_param"] == pytest.approx(d_num / n_num, rel=2e-3)
    expected = {1e21: 50.08, 1e24: 97.73}[flops]  # the README states these
    assert result["tokens_per_param"] == pytest.approx(expected, abs=0.01)
    arch = result["architecture"]
    assert abs(np.log(arch["params"] / result["params_opt"])) < 0.1


def test_isoflop_recovers_the_optimal_exponent():
    n_sizes = np.geomspace(1e7, 1e11, 60)
    ns, ds, cs = [], [], []
    for c in np.geomspace(1e18, 1e22, 5):
        n_opt = LAW.optimal(c)[0]
        near = n_sizes[(n_sizes > n_opt / 4) & (n_sizes < n_opt * 4)]
        ns += list(near)
        ds += list(c / (6 * near))
        cs += [c] * len(near)
    result = fits.isoflop(ns, ds, LAW.loss(np.array(ns), np.array(ds)), cs)
    assert result["params_opt"]["exponent"] == pytest.approx(0.28 / 0.62, rel=0.05)
    assert result["tokens_opt"]["exponent"] == pytest.approx(0.34 / 0.62, rel=0.05)


def test_mixed_modal_recovers_interaction_terms():
    text = chinchilla.ChinchillaLaw(1.8, 500.0, 600.0, 0.35, 0.3)
    image = chinchilla.ChinchillaLaw(2.2, 300.0, 900.0, 0.3, 0.33)
    truth = {"C": 0.08, "A": 40.0, "alpha": 0.25, "B": 150.0, "beta": 0.3}
    rows = []
    for n in np.geomspace(1e7, 1e10, 7):
        for d in np.geomspace(1e9, 1e12, 7):
            rows.append(
                {"params": n, "tokens": d, "loss": float(text.loss(n, d)), "modality": "text"}
            )
            rows.append(
                {"params": n, "tokens": d, "loss": float(image.loss(n, d)), "modality": "image"}
            )
            bimodal = (
                (text.loss(n, d / 2) + image.loss(n, d / 2)) / 2
                - truth["C"]
                + truth["A"] / n ** truth["alpha"]
                + truth["B"] / d ** truth["beta"]
            )
            rows.append(
                {"params": n, "tokens": d, "loss": float(bimodal), "modality": "text+image"}
            )
    result = fits.fit_mixed_modal(rows)
    pair = result["pairs"]["text+image"]
    assert pair["synergy"]
    for key in ("C", "alpha", "beta"):
        assert pair[key] == pytest.approx(truth[key], rel=0.05), key
    assert result["unimodal"]["text"]["alpha"] == pytest.approx(0.35, rel=0.01)


def test_downstream_two_step_prediction():
    flops = np.geomspace(1e18, 1e22, 12)
    nll = 0.6 + 2.0 * (flops / flops.max()) ** -0.15
    acc = 0.25 + 0.7 / (1 + np.exp(4.0 * (nll - 1.4)))
    result = fits.fit_downstream(flops, nll, acc)
    x, a = result["predict"]([1e23])
    true_nll = 0.6 + 2.0 * 10**-0.15
    assert float(x[0]) == pytest.approx(true_nll, rel=0.01)
    assert float(a[0]) == pytest.approx(0.25 + 0.7 / (1 + np.exp(4.0 * (true_nll - 1.4))), abs=0.01)


def test_bad_points_are_refused():
    n, d = _grid(4, 2)
    loss = LAW.loss(n, d)
    with pytest.raises(HerdError, match="fewer than the 6 needed"):
        chinchilla.fit(n[:5], d[:5], loss[:5])
    with pytest.raises(HerdError, match="loss: 1 value"):
        chinchilla.fit(n, d, np.r_[loss[:-1], np.nan])
    with pytest.raises(HerdError, match="params: every value must be positive"):
        chinchilla.fit(np.r_[n[:-1], 0.0], d, loss)


def test_flops_per_token_counts():
    config = preset("llama3-8b")
    dense = 8_030_261_248 - 128_256 * 4096  # untied: the embedding table is a lookup
    assert config.flops_per_token(8192) == 6 * dense + 12 * 32 * 4096 * 8192
    tied = preset("llama3.2-1b")  # tied: the table is also the output projection, counted once
    assert tied.flops_per_token(2048) == 6 * 1_235_814_400 + 12 * 16 * 2048 * 2048


def test_plan_parameter_count_is_the_models():
    # nearest_architecture searches thousands of shapes with ModelConfig's count from the shapes;
    # it must be the count of the model herd builds (on the meta device: no memory).
    from herd.model.transformer import Transformer

    for dim, layers in ((64, 2), (512, 8), (1024, 16), (4096, 32)):
        config = llama_shape(dim, layers, vocab_size=32000, max_seq_len=2048)
        for shape in (config, dataclasses.replace(config, tie_embeddings=True)):
            with torch.device("meta"):
                built = sum(p.numel() for p in Transformer(shape).parameters())
            assert shape.num_params() == built
