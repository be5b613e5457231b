"""A known dynamic scene and an exact "oracle" prior, to measure SDS's 4D optimisation with no
diffusion model in the way (issue 28's evidence).

`BallScene`: a shaded ball (Lambertian, a fixed light, an ambient term) whose centre moves along
a smooth path inside the field's box as time runs from -1 to 1, rendered exactly by ray-sphere
intersection from any `Camera` over the background the field's renders use.

`OraclePrior` works in pixel space (latents are pixels scaled to [-1, 1]) and knows the answer: given
the scene's renders x* of the same views as its condition, it predicts the noise that takes x_t
back to x*:  eps_hat = (x_t - sqrt(a_t) x*) / sqrt(1 - a_t).  SDS's gradient is then
w(t) sqrt(a_t) / sqrt(1 - a_t) (x - x*): each step pulls the render towards the scene's view, at
a timestep-dependent strength, so SDS alone must recover the scene's geometry and motion for
renders from cameras and times it never saw to match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from herd.fourd.rendering import Camera


@dataclass(frozen=True)
class BallScene:
    radius: float = 0.35
    colour: tuple[float, float, float] = (0.9, 0.2, 0.15)
    light: tuple[float, float, float] = (0.4, 0.8, 0.45)
    ambient: float = 0.3
    background: float = 1.0

    def centre(self, time: float) -> torch.Tensor:
        """The ball's centre at `time` in [-1, 1]: a half circle in x-z, rising in y."""
        a = math.pi * (time + 1) / 2
        return torch.tensor([0.5 * math.cos(a), 0.25 * time, 0.5 * math.sin(a) - 0.1])

    def render(self, camera: Camera, time: float, size: int) -> torch.Tensor:
        """The exact image [3, size, size] in [0, 1]."""
        origins, dirs = camera.rays(size, size)
        offset = origins - self.centre(time)
        b = (dirs * offset).sum(-1)
        c = offset.square().sum(-1) - self.radius**2
        disc = b * b - c
        hit = disc > 0
        t = -b - disc.clamp(min=0).sqrt()
        hit &= t > 0
        normal = (offset + t.unsqueeze(-1) * dirs) / self.radius
        light = torch.tensor(self.light)
        light = light / light.norm()
        shade = self.ambient + (1 - self.ambient) * (normal @ light).clamp(min=0)
        colour = torch.tensor(self.colour) * shade.unsqueeze(-1)
        image = torch.where(hit.unsqueeze(-1), colour, torch.full_like(colour, self.background))
        return image.T.reshape(3, size, size)


class OraclePrior:
    """The module doc's exact noise predictor, with a DDPM schedule of `steps` steps (Stable
    Diffusion's scaled-linear betas, 0.00085 to 0.012, as ModelScope's text-to-video uses)."""

    def __init__(self, steps: int = 1000) -> None:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()

    @staticmethod
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return pixels * 2 - 1

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, target: torch.Tensor):
        a = self.alphas_cumprod.to(noisy.device)[t].view(-1, *[1] * (noisy.dim() - 1))
        return (noisy - a.sqrt() * target) / (1 - a).sqrt()

    def condition(self, scene: BallScene, views, size: int) -> torch.Tensor:
        """The encoded renders x* of `views` (per sample a list of (camera, time) frames):
        [B, 3, F, size, size] for videos (F > 1), [B, 3, size, size] for single frames."""
        clips = [torch.stack([scene.render(c, t, size) for c, t in frames], dim=1)
                 for frames in views]  # fmt: skip
        batch = torch.stack(clips)
        return self.encode(batch[:, :, 0] if batch.shape[2] == 1 else batch)


@torch.no_grad()
def held_out_psnr(field, scene: BallScene, settings, views: int = 8, size: int = 32) -> float:
    """Mean PSNR (dB) of the field's renders against the scene's from `views` cameras at times
    no training clip rendered: halfway between its frames' times, with azimuths and elevations
    from a generator of their own (training draws them from the run's seed)."""
    import random

    from herd.fourd.optimise import psnr
    from herd.fourd.rendering import render_image

    rng = random.Random(12345)
    frames = settings.frames
    mids = [-1.0 + 2.0 * (i + 0.5) / max(1, frames - 1) for i in range(frames - 1)] or [0.0]
    scores = []
    for k in range(views):
        camera = Camera(rng.uniform(0, 360), rng.uniform(*settings.elevation), settings.radius,
                        settings.fov)  # fmt: skip
        t = mids[k % len(mids)]
        render = render_image(field, camera, t, size, samples=settings.samples)
        scores.append(psnr(render, scene.render(camera, t, size)))
    return sum(scores) / len(scores)
