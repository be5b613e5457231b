"""PPO for RLHF as in Llama 2-Chat: reward shaping, KL-penalised token rewards, GAE, clipped losses.

Llama 2 (Touvron et al., 2023, §3.2.3 and App. A.3) optimises the policy π with PPO (Schulman et
al., 2017) on the reward

    R(g | p) = R̃_c(g | p) − β · D_KL(π_θ(g | p) ‖ π_0(g | p)),
    R_c = R_s if is_safety(p) or R_s < 0.15 else R_h,   R̃_c = whiten(logit(R_c)),

where R_h and R_s are the helpfulness and safety reward models' scores read as probabilities in
(0, 1), π_0 is the initial (SFT) policy and β = 0.01 for 7B/13B, 0.005 for 34B/70B. The safety
score takes over on prompts tagged as risky and wherever the answer looks unsafe (R_s < 0.15,
chosen in the paper for a precision of 0.89 on the Meta Safety test set).

Everything here is a pure function of tensors: one row per sampled response, right-padded to a
common length T, with `mask` [B, T] (bool or 0/1) true on the response tokens. Positions outside
the mask never contribute: their rewards, returns and advantages are zero, and every mean is over
the mask. Computed in float32 at least (float64 inputs stay float64). The conventions follow TRL's PPO
(`trl/experimental/ppo/ppo_trainer.py`, the formulas of Ziegler et al. 2019 and Stiennon et al.
2020) except where noted: the sequence score lands on the response's last token (TRL puts it one
past it, on the first padding position), and the approximate KL is a masked mean (TRL's counts
padding in its denominator). tests/parity/test_ppo_pieces.py checks each piece against a direct
loop-by-loop computation.

The per-token rewards are the KL penalty at every response token plus the shaped score at the
last one; GAE (Schulman et al., 2016) turns them and the value model's estimates into advantages
(whitened over the batch) and returns (the value model's regression targets); the policy and
value losses are PPO's clipped surrogates.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from herd.train.config import PPOConfig as PPOConfig  # [ppo], torch-free for `--help`

SAFETY_THRESHOLD = 0.15  # Llama 2 §3.2.3: R_s below it lets safety override helpfulness
KL_COEF_SMALL = 0.01  # β for Llama 2-Chat 7B and 13B (§3.2.3)
KL_COEF_LARGE = 0.005  # β for 34B and 70B
LOGIT_EPS = 1e-6  # reward probabilities are clamped to [eps, 1 − eps] before the logit
WHITEN_EPS = 1e-8  # added to the variance before its inverse square root, as TRL


def _wide(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 at least: bf16 log-probs and values would lose the small differences PPO
    is made of."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# Llama 2 §3.2.3's optimizer for PPO, as overrides of the run's [optim] section (the format of
# `load_stage_config`'s stage defaults): AdamW β (0.9, 0.95), ε 1e-5, weight decay 0.1, gradient
# clipping at 1.0, and a constant learning rate of 1e-6 (no warm-up; the cosine ends where it
# starts, at min_lr_ratio 1).
PPO_OPTIM_DEFAULTS = {
    "optim.lr": "1e-6",
    "optim.warmup_steps": "0",
    "optim.min_lr_ratio": "1.0",
    "optim.beta1": "0.9",
    "optim.beta2": "0.95",
    "optim.eps": "1e-5",
    "optim.weight_decay": "0.1",
    "optim.grad_clip": "1.0",
}


# ---------------------------------------------------------------------------------------------
# Reward shaping (Llama 2 §3.2.3)


def combine_rewards(
    helpful: torch.Tensor,
    safety: torch.Tensor,
    is_safety_prompt: torch.Tensor,
    threshold: float = SAFETY_THRESHOLD,
) -> torch.Tensor:
    """R_c [B]: the safety score where the prompt is tagged risky or R_s < threshold, else the
    helpfulness score. Scores are probabilities in (0, 1) (a reward model's sigmoid)."""
    use_safety = is_safety_prompt.bool() | (safety < threshold)
    return torch.where(use_safety, safety, helpful)


def logit(p: torch.Tensor, eps: float = LOGIT_EPS) -> torch.Tensor:
    """log(p / (1 − p)) with p clamped to [eps, 1 − eps], in float32 at least.

    The clamp keeps a saturated reward model (p rounding to 0 or 1) finite: at eps = 1e-6 the
    logit spans ±13.8, beyond any score a reward model trained with the ranking loss gives in
    practice, so it only guards against infinities. When the scores are sigmoid(s) of raw reward
    model outputs s, logit recovers s."""
    return torch.logit(_wide(p).clamp(eps, 1.0 - eps))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is true (all of them, or along `dim`)."""
    m = mask.to(values.dtype)
    if dim is None:
        return (values * m).sum() / m.sum()
    return (values * m).sum(dim) / m.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the mask; `unbiased` applies Bessel's n / (n − 1), n the masked count (TRL's
    masked_var, whose default PPO uses for every whitening)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum().to(var.dtype)
        if int(n) < 2:  # a host sync, once per batch: n − 1 = 0 would give inf silently
            raise ValueError(f"unbiased variance needs at least 2 masked values, got {int(n)}")
        var = var * (n / (n - 1))
    return var


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    shift_mean: bool = True,
    eps: float = WHITEN_EPS,
) -> torch.Tensor:
    """(values − mean) / sqrt(var + eps) with the masked mean and unbiased variance, zero outside
    the mask (TRL's masked_whiten). With shift_mean=False the mean is added back: only the scale
    changes. `mask` None counts every position."""
    values = _wide(values)
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    mask = mask.bool()
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


def shaped_scores(
    helpful: torch.Tensor,
    safety: torch.Tensor,
    is_safety_prompt: torch.Tensor,
    threshold: float = SAFETY_THRESHOLD,
) -> torch.Tensor:
    """R̃_c = whiten(logit(R_c)) over the batch [B] (Llama 2 §3.2.3): the logit undoes the
    sigmoid so the scores are on the reward model's linear scale, and whitening gives every batch
    mean 0 and spread 1, so β means the same thing whatever the reward models' scales."""
    return whiten(logit(combine_rewards(helpful, safety, is_safety_prompt, threshold)))


# ---------------------------------------------------------------------------------------------
# Per-token rewards with the KL penalty


def _k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def _k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    log_ratio = ref_logprobs - logprobs  # log π_0/π at the sampled token
    return torch.expm1(log_ratio) - log_ratio


# Estimators of KL(π ‖ π_0) from a token sampled from π (Schulman, "Approximating KL divergence",
# 2020): k1 is log π/π_0 itself, unbiased but can be negative per token; k3 = (r − 1) − log r with
# r = π_0/π is unbiased and never negative, with lower variance when π and π_0 are close.
KL_ESTIMATORS = {"k1": _k1, "k3": _k3}


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """The chosen estimate of KL(π ‖ π_0) at each sampled token [B, T]."""
    return KL_ESTIMATORS[estimator](_wide(logprobs), _wide(ref_logprobs))


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last masked-in position [B] (rows need at least one)."""
    T = mask.shape[1]
    return T - 1 - mask.bool().flip(1).int().argmax(1)


class TokenRewards(NamedTuple):
    """Per-token rewards [B, T] (score at the last response token, −β·KL at every one) and the
    per-token KL estimates [B, T] behind them, both zero outside the mask."""

    rewards: torch.Tensor
    kl: torch.Tensor


def kl_penalised_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float = KL_COEF_SMALL,
    estimator: str = "k1",
) -> TokenRewards:
    """r_t = −β · KL_t at every response token, plus the sequence's score at its last token.

    The penalty per token (Ziegler et al. 2019, Stiennon et al. 2020) rather than once per
    sequence lets GAE credit each token with the divergence it caused; summed over a response it
    is β times the k1 estimate of KL(π ‖ π_0) on that sample (Llama 2's penalty term)."""
    mask = mask.bool()
    kl = torch.where(mask, kl_per_token(logprobs, ref_logprobs, estimator), 0.0)
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_positions(mask)] += scores.to(rewards.dtype)
    return TokenRewards(rewards, kl)


# ---------------------------------------------------------------------------------------------
# Generalised advantage estimation


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns [B, T] by GAE over each row's masked-in positions (Schulman et al.
    2016): δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}, with V and A zero after the last
    response token (the episode ends there) and returns A_t + V_t, the value targets. Masked-out
    positions are skipped (the next step of a token is the next masked-in one) and hold zero.
    The advantages are raw; `advantages_and_returns` whitens them."""
    mask = mask.bool()
    rewards, values = _wide(rewards), _wide(values)
    B, T = rewards.shape
    next_value = rewards.new_zeros(B)
    next_advantage = rewards.new_zeros(B)
    advantages = torch.zeros_like(rewards)
    # A loop over T from the end: each step depends on the next (T is a response length, and
    # every operation is over the batch, so this is T small kernels per rollout, not per token).
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(m, advantage, 0.0)
        next_value = torch.where(m, values[:, t], next_value)
        next_advantage = torch.where(m, advantage, next_advantage)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def advantages_and_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages whitened over every response token of the batch (as TRL's PPO), and the
    unwhitened returns: the policy step's size then does not follow the rewards' scale, while the
    value model still regresses on returns in reward units."""
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return whiten(advantages, mask), returns


# ---------------------------------------------------------------------------------------------
# Clipped losses (PPO, Schulman et al. 2017, eq. 7 and the value clip of its baselines code)


class PolicyLoss(NamedTuple):
    """The clipped surrogate loss (scalar, to minimise) and its metrics (detached): the fraction
    of response tokens where the clip was active, the approximate KL(π_old ‖ π) as ½·E[(log
    ratio)²], and the mean ratio."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio: torch.Tensor


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> PolicyLoss:
    """mean over response tokens of max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = π/π_old per token.

    The max of the two negated terms is PPO's pessimistic min of the objectives: the policy gains
    nothing from moving a token's probability beyond the clip range in the advantage's favour."""
    mask = mask.bool()
    log_ratio = _wide(logprobs) - _wide(old_logprobs)
    ratio = torch.exp(log_ratio)
    advantages = _wide(advantages)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(loss.dtype), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl, mean_ratio)


class ValueLoss(NamedTuple):
    """The clipped value loss (scalar) and the fraction of tokens where the clipped term won."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> ValueLoss:
    """½ · mean over response tokens of max((V − R)², (V_clip − R)²), with V_clip the new value
    held within cliprange_value of the rollout's: the value model, like the policy, moves a
    bounded step per rollout (OpenAI baselines' PPO2, kept by TRL)."""
    mask = mask.bool()
    values, old_values, returns = _wide(values), _wide(old_values), _wide(returns)
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(loss.dtype), mask)
    return ValueLoss(loss, clip_fraction)


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the policy's next-token distributions [B, T, V] over the mask (a metric:
    a collapsing entropy is the first sign of reward hacking). logsumexp(z) − Σ softmax(z)·z,
    which needs no log of a zero probability."""
    with torch.no_grad():
        logits = _wide(logits)
        entropy = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
        return masked_mean(entropy, mask.bool())
