"""Score distillation sampling (Poole et al. 2022, DreamFusion; as threestudio implements it).

For renders encoded as latents x (an image's [B, C, h, w] or a video's [B, C, F, h, w]), one
diffusion timestep per sample t ~ U[t_min, t_max] * T, noise eps, x_t = add_noise(x, eps, t), the
prior's noise prediction eps_hat (with classifier-free guidance), and

    grad = w(t) * (eps_hat - eps),   w(t) = 1 - alpha_bar_t,

the loss 0.5 * || x - stopgrad(x - grad) ||^2 (summed, over the batch size) has dL/dx = grad /
batch: the U-Net is never differentiated, and autograd carries grad back through the encoder and
the renderer to the field.

Guidance convention: herd uses diffusers' (and the usual) classifier-free guidance scale s,
eps_hat = eps_uncond + s * (eps_cond - eps_uncond), where s = 1 is the conditional prediction
alone. threestudio writes eps_cond + s' * (eps_cond - eps_uncond), so its s' = s - 1 (its
DreamFusion default of 100 is herd's 101).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class Prior(Protocol):
    """What SDS needs from a diffusion model (herd/fourd/priors.py; the oracle in analytic.py)."""

    alphas_cumprod: torch.Tensor  # [T]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, condition) -> torch.Tensor: ...


@dataclass
class SDSStep:
    loss: torch.Tensor
    t: torch.Tensor  # [B] timesteps drawn
    grad_norm: float  # of w(t) (eps_hat - eps)


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in diffusers' convention (module doc)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def add_noise(
    x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod
) -> torch.Tensor:
    """sqrt(a_t) x + sqrt(1 - a_t) eps, as DDPM's forward process (diffusers' add_noise)."""
    a = alphas_cumprod.to(x.device, x.dtype)[t].view(-1, *[1] * (x.dim() - 1))
    return a.sqrt() * x + (1 - a).sqrt() * noise


def sds_loss_from(latents, eps_hat, noise, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grad): the stop-gradient form of w (eps_hat - eps) (module doc)."""
    grad = torch.nan_to_num(weight.view(-1, *[1] * (latents.dim() - 1)) * (eps_hat - noise))
    target = (latents - grad).detach()
    loss = 0.5 * (latents - target).square().sum() / latents.shape[0]
    return loss, grad


def sds_step(
    prior: Prior,
    pixels: torch.Tensor,
    condition,
    generator: torch.Generator | None = None,
    t_range: tuple[float, float] = (0.02, 0.98),
) -> SDSStep:
    """Encode `pixels` (renders in [0, 1], with autograd) and return SDS's loss for them."""
    latents = prior.encode(pixels)
    T = prior.alphas_cumprod.shape[0]
    lo, hi = int(t_range[0] * T), int(t_range[1] * T)
    B = latents.shape[0]
    t = torch.randint(lo, hi + 1, (B,), generator=generator).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    with torch.no_grad():
        noisy = add_noise(latents.detach(), noise, t, prior.alphas_cumprod)
        eps_hat = prior.predict_noise(noisy, t, condition)
    weight = 1 - prior.alphas_cumprod.to(latents.device, latents.dtype)[t]
    loss, grad = sds_loss_from(latents, eps_hat, noise, weight)
    return SDSStep(loss, t, float(grad.norm()))
