"""Cameras, rays and volume rendering for the 4D field (NeRF's quadrature, Mildenhall et al.
2020), in the field's box [-1, 1]^3.

A `Camera` looks at the origin from a point on a sphere (azimuth, elevation in degrees, radius)
with a vertical field of view; `rays` gives one ray per pixel centre. Points are sampled along
each ray between its entry into and exit from the box (stratified: one uniform draw per bin while
training, bin centres otherwise), and composited front to back:

    alpha_i = 1 - exp(-sigma_i * delta_i),  T_i = prod_{j<i} (1 - alpha_j),  w_i = T_i * alpha_i
    colour = sum_i w_i c_i + (1 - sum_i w_i) * background,  opacity = sum_i w_i

so a slab of uniform density sigma and thickness d has opacity 1 - exp(-sigma * d) (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Field = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Camera:
    azimuth: float  # degrees, around the vertical (y) axis; 0 looks along -z
    elevation: float  # degrees above the horizontal plane
    radius: float = 3.0
    fov: float = 40.0  # vertical field of view, degrees

    def position(self) -> torch.Tensor:
        a, e = math.radians(self.azimuth), math.radians(self.elevation)
        return torch.tensor(
            [self.radius * math.cos(e) * math.sin(a), self.radius * math.sin(e),
             self.radius * math.cos(e) * math.cos(a)]
        )  # fmt: skip

    def rays(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(origins, unit directions), each [height * width, 3], row-major from the top left."""
        eye = self.position()
        forward = -eye / eye.norm()
        up = torch.tensor([0.0, 1.0, 0.0])
        right = torch.linalg.cross(forward, up)
        if right.norm() < 1e-6:  # straight above or below: any horizontal right vector
            right = torch.tensor([1.0, 0.0, 0.0])
        right = right / right.norm()
        true_up = torch.linalg.cross(right, forward)
        half = math.tan(math.radians(self.fov) / 2)
        ys = (1 - (torch.arange(height) + 0.5) * 2 / height) * half
        xs = ((torch.arange(width) + 0.5) * 2 / width - 1) * half * width / height
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        dirs = forward + grid_x.reshape(-1, 1) * right + grid_y.reshape(-1, 1) * true_up
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return eye.expand_as(dirs), dirs


def box_bounds(origins: torch.Tensor, dirs: torch.Tensor, bound: float = 1.0):
    """(near, far, hit) of each ray with the box [-bound, bound]^3 (slab method)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far, far > near


def composite(density, colour, deltas, background: float | torch.Tensor = 1.0):
    """(colour [R, 3], opacity [R], weights [R, S]) of densities [R, S] and colours [R, S, 3]
    at samples `deltas` [R, S] apart (the quadrature in the module doc)."""
    alpha = 1 - torch.exp(-density * deltas)
    transmittance = torch.cumprod(
        torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], dim=1), dim=1
    )
    weights = alpha * transmittance
    opacity = weights.sum(dim=1)
    rgb = (weights.unsqueeze(-1) * colour).sum(dim=1) + (1 - opacity).unsqueeze(-1) * background
    return rgb, opacity, weights


def render_rays(
    field: Field,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    time: float | torch.Tensor,
    samples: int = 64,
    background: float | torch.Tensor = 1.0,
    stratified: bool = False,
    generator: torch.Generator | None = None,
):
    """(colour [R, 3], opacity [R]) of rays through `field` at `time` in [-1, 1] (one time, or
    one per ray [R]: a whole clip in one call); rays that miss the box see the background."""
    near, far, hit = box_bounds(origins, dirs)
    far = torch.where(hit, far, near + 1e-3)
    R = origins.shape[0]
    edges = torch.linspace(0, 1, samples + 1, device=origins.device)
    if stratified:
        # drawn on the CPU (the run's generators are CPU ones), the same on every device
        jitter = torch.rand(R, samples, generator=generator).to(origins.device)
    else:
        jitter = torch.full((R, samples), 0.5, device=origins.device)
    u = edges[:-1] + jitter * (edges[1:] - edges[:-1])  # [R, S] in (0, 1)
    t = near.unsqueeze(1) + u * (far - near).unsqueeze(1)
    deltas = torch.full_like(t, 1.0 / samples) * (far - near).unsqueeze(1)
    points = origins.unsqueeze(1) + t.unsqueeze(-1) * dirs.unsqueeze(1)  # [R, S, 3]
    times = torch.as_tensor(time, dtype=points.dtype, device=points.device)
    times = (times.reshape(-1, 1) if times.dim() else times).expand(R, samples)
    density, colour = field(points.reshape(-1, 3).clamp(-1, 1), times.reshape(-1))
    density = density.view(R, samples) * hit.unsqueeze(1)
    rgb, opacity, _ = composite(density, colour.view(R, samples, 3), deltas, background)
    return rgb, opacity


def render_image(field: Field, camera: Camera, time: float, size: int, **kwargs) -> torch.Tensor:
    """An image [3, size, size] of `field` from `camera` at `time`."""
    origins, dirs = camera.rays(size, size)
    rgb, _ = render_rays(field, origins, dirs, time, **kwargs)
    return rgb.T.reshape(3, size, size)
