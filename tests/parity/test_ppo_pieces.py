"""herd's PPO pieces (herd/posttrain/ppo.py) against a direct computation on a fixed rollout.

TRL 1.16, the version installed, no longer ships its PPO trainer or `masked_whiten` (gone from
`trl.core`, `trl.trainer.utils` and `trl.experimental`), and torchtune is not a dependency, so the
reference here is written out in plain Python: each response as a list of floats of its own
length (no padding, no masks, no tensors), loops in the order the formulas are written, `math`
for the arithmetic. It follows the conventions of TRL's PPO code (read for the facts: Bessel's
n / (n − 1) in the whitening variance, 1e-8 under the square root, k1 = log π − log π_0 and
k3 = (r − 1) − log r, ½ in the value loss, max of the negated surrogates), and herd's one
documented departure (the score on the last response token, not one past it).

The rollout has rows of different lengths (one of length 1, one filling T), padding with garbage
values that must not leak, and float64 tensors so the 1e-6 tolerance measures the formula, not
rounding; one test repeats the chain in float32. Every test also checks that a nearby wrong
formula (biased variance, λ off, the score one position late, no clip) lands outside the
tolerance, so the comparison can fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from herd.posttrain import ppo
from herd.train.config import load_run_config
from herd.train.optim import lr_factor

TOL = dict(atol=1e-6, rtol=1e-6)
LENGTHS = [11, 7, 3, 1, 9, 5]
T = 11
BETA, GAMMA, LAM, CLIP, VCLIP = 0.01, 1.0, 0.95, 0.2, 0.2


# --- the plain-Python reference ---------------------------------------------------------------


def ref_whiten(rows: list[list[float]], shift_mean: bool = True, unbiased: bool = True):
    flat = [x for row in rows for x in row]
    n = len(flat)
    mean = sum(flat) / n
    var = sum((x - mean) ** 2 for x in flat) / (n - 1 if unbiased else n)
    out = [[(x - mean) / math.sqrt(var + 1e-8) for x in row] for row in rows]
    if not shift_mean:
        out = [[x + mean for x in row] for row in out]
    return out


def ref_kl(logp: float, ref: float, estimator: str) -> float:
    if estimator == "k1":
        return logp - ref
    r = math.exp(ref - logp)  # π_0 / π at the sampled token
    return (r - 1) - math.log(r)


def ref_rewards(scores, logps, refs, beta, estimator, score_at=lambda n: n - 1):
    out = []
    for score, lp, rf in zip(scores, logps, refs, strict=True):
        row = [-beta * ref_kl(a, b, estimator) for a, b in zip(lp, rf, strict=True)]
        if score_at(len(row)) < len(row):
            row[score_at(len(row))] += score
        out.append(row)
    return out


def ref_gae(rewards, values, gamma, lam):
    advantages, returns = [], []
    for r, v in zip(rewards, values, strict=True):
        n = len(r)
        adv = [0.0] * n
        running = 0.0
        for t in reversed(range(n)):
            next_value = v[t + 1] if t + 1 < n else 0.0  # the episode ends with the response
            delta = r[t] + gamma * next_value - v[t]
            running = delta + gamma * lam * running
            adv[t] = running
        advantages.append(adv)
        returns.append([a + b for a, b in zip(adv, v, strict=True)])
    return advantages, returns


def ref_policy_loss(new, old, adv, clip):
    terms, clipped, sq = [], [], []
    for n_row, o_row, a_row in zip(new, old, adv, strict=True):
        for n, o, a in zip(n_row, o_row, a_row, strict=True):
            ratio = math.exp(n - o)
            plain = -a * ratio
            held = -a * min(max(ratio, 1 - clip), 1 + clip)
            terms.append(max(plain, held))
            clipped.append(1.0 if held > plain else 0.0)
            sq.append((n - o) ** 2)
    k = len(terms)
    return sum(terms) / k, sum(clipped) / k, 0.5 * sum(sq) / k


def ref_value_loss(new, old, returns, clip):
    terms, clipped = [], []
    for n_row, o_row, r_row in zip(new, old, returns, strict=True):
        for v, o, r in zip(n_row, o_row, r_row, strict=True):
            held = min(max(v, o - clip), o + clip)
            terms.append(max((v - r) ** 2, (held - r) ** 2))
            clipped.append(1.0 if (held - r) ** 2 > (v - r) ** 2 else 0.0)
    return 0.5 * sum(terms) / len(terms), sum(clipped) / len(clipped)


# --- the rollout --------------------------------------------------------------------------------


def padded(rows: list[list[float]], fill: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    out = torch.full((len(rows), T), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def rows_of(x: torch.Tensor) -> list[list[float]]:
    return [x[i, :n].tolist() for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def rollout():
    """Padded tensors [B, T] with garbage (7.0) in the padding, and their ragged lists."""
    g = torch.Generator().manual_seed(0)
    B = len(LENGTHS)
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]

    def draw(scale=1.0, shift=0.0):
        x = shift + scale * torch.randn(B, T, generator=g, dtype=torch.float64)
        return torch.where(mask, x, 7.0)

    logp = torch.where(mask, -3 * torch.rand(B, T, generator=g, dtype=torch.float64), 7.0)
    roll = dict(
        mask=mask,
        logp=logp,
        ref=torch.where(mask, logp + 0.3 * torch.randn(B, T, generator=g), 7.0),
        new=torch.where(mask, logp + 0.2 * torch.randn(B, T, generator=g), 7.0),
        values=draw(),
        new_values=None,
        scores=torch.randn(B, generator=g, dtype=torch.float64),
    )
    roll["new_values"] = torch.where(
        mask, roll["values"] + 0.3 * torch.randn(B, T, generator=g), 7.0
    )
    return roll


def close(actual: torch.Tensor, rows: list[list[float]], mask: torch.Tensor) -> None:
    torch.testing.assert_close(actual, padded(rows, dtype=actual.dtype), **TOL)
    assert not actual[~mask].any(), "padding must hold zeros"


def far(actual: torch.Tensor, rows: list[list[float]]) -> bool:
    expected = padded(rows, dtype=actual.dtype)
    return not torch.allclose(actual, expected, atol=1e-4, rtol=1e-4)


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten(rollout, shift_mean):
    mask, x = rollout["mask"], rollout["values"]
    out = ppo.whiten(x, mask, shift_mean=shift_mean)
    close(out, ref_whiten(rows_of(x), shift_mean), mask)
    assert far(out, ref_whiten(rows_of(x), shift_mean, unbiased=False))  # Bessel matters
    flat = out[mask]
    if shift_mean:
        assert abs(flat.mean().item()) < 1e-12
        assert abs(flat.std().item() - 1) < 1e-6  # unit spread under the unbiased variance


def test_whiten_needs_two_values():
    with pytest.raises(ValueError, match="at least 2"):
        ppo.whiten(torch.tensor([[1.0, 2.0]]), torch.tensor([[True, False]]))


def test_combine_rewards_and_shaped_scores():
    helpful = torch.tensor([0.9, 0.9, 0.9, 0.2, 0.6, 1.0, 0.0], dtype=torch.float64)
    safety = torch.tensor([0.8, 0.10, 0.15, 0.7, 0.3, 0.5, 0.9], dtype=torch.float64)
    risky = torch.tensor([False, False, False, True, True, False, False])
    expected = [
        s if (r or s < 0.15) else h
        for h, s, r in zip(helpful.tolist(), safety.tolist(), risky, strict=True)
    ]
    combined = ppo.combine_rewards(helpful, safety, risky)
    assert combined.tolist() == expected
    assert combined[2] == 0.9  # R_s = 0.15 exactly is not below the threshold

    clamped = [min(max(p, 1e-6), 1 - 1e-6) for p in expected]
    logits = [math.log(p / (1 - p)) for p in clamped]
    torch.testing.assert_close(ppo.logit(combined), torch.tensor(logits, dtype=torch.float64))
    assert torch.isfinite(ppo.logit(combined)).all()  # 1.0 and 0.0 are clamped, not infinite
    shaped = ppo.shaped_scores(helpful, safety, risky)
    torch.testing.assert_close(shaped, torch.tensor(ref_whiten([logits])[0], dtype=torch.float64))
    # Whitening the probabilities instead of their logits is a different reward.
    assert not torch.allclose(shaped, ppo.whiten(combined), atol=1e-3)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalised_rewards(rollout, estimator):
    r = rollout
    out = ppo.kl_penalised_rewards(r["scores"], r["logp"], r["ref"], r["mask"], BETA, estimator)
    scores, logps, refs = r["scores"].tolist(), rows_of(r["logp"]), rows_of(r["ref"])
    close(out.rewards, ref_rewards(scores, logps, refs, BETA, estimator), r["mask"])
    kls = [
        [ref_kl(a, b, estimator) for a, b in zip(lp, rf, strict=True)]
        for lp, rf in zip(logps, refs, strict=True)
    ]
    close(out.kl, kls, r["mask"])
    if estimator == "k3":
        assert (out.kl[r["mask"]] >= 0).all()
    # TRL's placement (one past the last token) gives other rewards.
    late = ref_rewards(scores, logps, refs, BETA, estimator, score_at=lambda n: n)
    assert far(out.rewards, late)


def test_gae_and_returns(rollout):
    r = rollout
    rewards = ppo.kl_penalised_rewards(r["scores"], r["logp"], r["ref"], r["mask"], BETA).rewards
    # Garbage in the padding of the rewards too: GAE must read only masked-in positions.
    rewards = torch.where(r["mask"], rewards, 7.0)
    adv, ret = ppo.gae(rewards, r["values"], r["mask"], GAMMA, LAM)
    ref_adv, ref_ret = ref_gae(rows_of(rewards), rows_of(r["values"]), GAMMA, LAM)
    close(adv, ref_adv, r["mask"])
    close(ret, ref_ret, r["mask"])
    assert far(adv, ref_gae(rows_of(rewards), rows_of(r["values"]), GAMMA, 0.9)[0])

    # Discounting too: γ < 1 against the same loops.
    adv, ret = ppo.gae(rewards, r["values"], r["mask"], 0.9, 0.8)
    ref_adv, ref_ret = ref_gae(rows_of(rewards), rows_of(r["values"]), 0.9, 0.8)
    close(adv, ref_adv, r["mask"])
    close(ret, ref_ret, r["mask"])

    white, ret = ppo.advantages_and_returns(rewards, r["values"], r["mask"], GAMMA, LAM)
    ref_adv, ref_ret = ref_gae(rows_of(rewards), rows_of(r["values"]), GAMMA, LAM)
    close(white, ref_whiten(ref_adv), r["mask"])
    close(ret, ref_ret, r["mask"])  # returns stay in reward units


def test_policy_loss(rollout):
    r = rollout
    adv = torch.where(r["mask"], torch.randn(r["mask"].shape, dtype=torch.float64), 7.0)
    out = ppo.policy_loss(r["new"], r["logp"], adv, r["mask"], CLIP)
    loss, clip_fraction, approx_kl = ref_policy_loss(
        rows_of(r["new"]), rows_of(r["logp"]), rows_of(adv), CLIP
    )
    assert 0.05 < clip_fraction < 0.5, "the rollout must exercise the clip"
    torch.testing.assert_close(out.loss, torch.tensor(loss, dtype=torch.float64), **TOL)
    torch.testing.assert_close(
        out.clip_fraction, torch.tensor(clip_fraction, dtype=torch.float64), **TOL
    )
    torch.testing.assert_close(out.approx_kl, torch.tensor(approx_kl, dtype=torch.float64), **TOL)
    unclipped = ref_policy_loss(rows_of(r["new"]), rows_of(r["logp"]), rows_of(adv), 10.0)[0]
    assert abs(out.loss.item() - unclipped) > 1e-4


def test_policy_loss_gradient_stops_at_the_clip():
    """A token whose ratio already left the clip range on the advantage's side gets no gradient;
    one inside it gets −A·ρ / n (the surrogate's derivative in log π, averaged over n tokens)."""
    logp = torch.tensor([[0.5, 0.05, -0.5, 0.05]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 4, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    ppo.policy_loss(logp, old, adv, mask, CLIP).loss.backward()
    ratio = math.exp(0.05)
    expected = [0.0, -ratio / 4, 0.0, ratio / 4]
    torch.testing.assert_close(logp.grad, torch.tensor([expected], dtype=torch.float64))


def test_value_loss(rollout):
    r = rollout
    rewards = ppo.kl_penalised_rewards(r["scores"], r["logp"], r["ref"], r["mask"], BETA).rewards
    _, returns = ppo.gae(rewards, r["values"], r["mask"], GAMMA, LAM)
    out = ppo.value_loss(r["new_values"], r["values"], returns, r["mask"], VCLIP)
    loss, clip_fraction = ref_value_loss(
        rows_of(r["new_values"]), rows_of(r["values"]), rows_of(returns), VCLIP
    )
    assert 0.05 < clip_fraction < 0.9, "the rollout must exercise the clip"
    torch.testing.assert_close(out.loss, torch.tensor(loss, dtype=torch.float64), **TOL)
    torch.testing.assert_close(
        out.clip_fraction, torch.tensor(clip_fraction, dtype=torch.float64), **TOL
    )
    unclipped = ref_value_loss(
        rows_of(r["new_values"]), rows_of(r["values"]), rows_of(returns), 1e9
    )[0]
    assert abs(out.loss.item() - unclipped) > 1e-4


def test_masked_entropy():
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    entropies = []
    for b, t in mask.nonzero().tolist():
        z = logits[b, t].tolist()
        top = max(z)
        total = sum(math.exp(x - top) for x in z)
        entropies.append(-sum(math.exp(x - top) / total * (x - top - math.log(total)) for x in z))
    expected = torch.tensor(sum(entropies) / len(entropies), dtype=torch.float64)
    torch.testing.assert_close(ppo.masked_entropy(logits, mask), expected, **TOL)


def test_float32_chain_matches(rollout):
    """The whole chain in float32 (what a run feeds it) stays within 1e-5 of the float64 one."""
    r = rollout
    out = {}
    for dtype in (torch.float64, torch.float32):
        rewards = ppo.kl_penalised_rewards(
            r["scores"].to(dtype), r["logp"].to(dtype), r["ref"].to(dtype), r["mask"], BETA
        ).rewards
        adv, ret = ppo.advantages_and_returns(rewards, r["values"].to(dtype), r["mask"])
        out[dtype] = (
            adv,
            ret,
            ppo.policy_loss(r["new"].to(dtype), r["logp"].to(dtype), adv, r["mask"]).loss,
        )
        assert all(x.dtype == dtype for x in out[dtype])
    for a, b in zip(out[torch.float32], out[torch.float64], strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_config_defaults_are_llama2s():
    c = ppo.PPOConfig()
    assert (c.batch_size, c.mini_batch_size, c.ppo_epochs, c.clip) == (512, 64, 1, 0.2)
    assert (c.kl_coef, c.kl_estimator, c.safety_threshold) == (0.01, "k1", 0.15)
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo.PPOConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="multiple"):
        ppo.PPOConfig(batch_size=100, mini_batch_size=64)

    run = load_run_config(None, {}, defaults=ppo.PPO_OPTIM_DEFAULTS)
    o = run.optim
    assert (o.beta1, o.beta2, o.eps, o.weight_decay, o.grad_clip) == (0.9, 0.95, 1e-5, 0.1, 1.0)
    assert {o.lr * lr_factor(step, 1000, o) for step in (0, 1, 500, 999)} == {1e-6}  # constant
