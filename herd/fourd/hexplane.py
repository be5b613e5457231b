"""A dynamic radiance field on six feature planes (HexPlane, Cao & Johnson 2023; K-Planes,
Fridovich-Keil et al. 2023), the 4D representation MAV3D optimises.

A point (x, y, z) at time t, each in [-1, 1], reads six planes: the spatial xy, xz, yz and the
space-time zt, yt, xt. Each spatial plane is paired with its complementary space-time plane
(xy with zt, xz with yt, yz with xt), so every pair covers all four coordinates; features are
multiplied within a pair and concatenated across the three pairs and across `scales` spatial
resolutions (K-Planes' multiscale grids; time keeps one resolution). A small MLP maps them to a
density (softplus, with a bias so an empty field starts faint) and a colour (sigmoid).

Lookups are bilinear (`F.grid_sample`, align_corners=True: the plane's corner texels sit at
-1 and 1). Space-time planes start at 1 (a product with them leaves the spatial feature as it is:
the field starts static) and spatial planes at small random values, as K-Planes initialises them.

Regularisers (each a scalar, weighted by the caller):
  - `total_variation`: squared differences between neighbouring texels of every plane, along
    both axes (smooth space);
  - `time_smoothness`: squared second differences along the time axis of the space-time planes
    (smooth motion);
  - `static_l1`: the mean |1 - P| of the space-time planes, which pulls the scene towards a
    static one (motion only where the prior asks for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# (spatial plane axes, space-time plane axes): pairs that together cover x, y, z and t (axis 3)
PAIRS = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((1, 2), (0, 3)))


@dataclass(frozen=True)
class FieldConfig:
    """The shape of a `HexPlaneField`."""

    features: int = field(default=16, metadata={"help": "feature channels per plane"})
    resolution: int = field(default=64, metadata={"help": "spatial texels per side at scale 1"})
    time_resolution: int = field(default=16, metadata={"help": "texels along time"})
    scales: tuple[int, ...] = field(
        default=(1, 2), metadata={"help": "spatial resolution multipliers (multiscale planes)"}
    )
    hidden: int = field(default=64, metadata={"help": "MLP hidden width"})
    density_bias: float = field(
        default=-1.0, metadata={"help": "added before the softplus: an empty field starts faint"}
    )


class HexPlaneField(nn.Module):
    """(points [N, 3], times [N]) in [-1, 1] -> (density [N] >= 0, colour [N, 3] in [0, 1])."""

    def __init__(self, config: FieldConfig = FieldConfig(), seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        generator = torch.Generator().manual_seed(seed)
        self.space = nn.ParameterList()
        self.time = nn.ParameterList()
        for scale in c.scales:
            r = c.resolution * scale
            for _ in PAIRS:
                # [1, C, H, W]: H indexes the plane's second axis, W its first (grid_sample's x)
                start = torch.rand(1, c.features, r, r, generator=generator) * 0.4 + 0.1
                self.space.append(nn.Parameter(start))
                self.time.append(nn.Parameter(torch.ones(1, c.features, c.time_resolution, r)))
        width = c.features * len(PAIRS) * len(c.scales)
        self.mlp = nn.Sequential(
            nn.Linear(width, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden), nn.SiLU(),
            nn.Linear(c.hidden, 4),
        )  # fmt: skip

    def features(self, points: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """[N, features * 3 * scales]: the planes' product-and-concatenate features."""
        coords = torch.cat([points, times.unsqueeze(-1)], dim=-1)  # [N, 4]
        out = []
        for i in range(len(self.config.scales)):
            for j, (space_axes, time_axes) in enumerate(PAIRS):
                k = i * len(PAIRS) + j
                a = sample_plane(self.space[k], coords[:, space_axes])
                b = sample_plane(self.time[k], coords[:, time_axes])
                out.append(a * b)
        return torch.cat(out, dim=-1)

    def forward(self, points: torch.Tensor, times: torch.Tensor):
        raw = self.mlp(self.features(points, times))
        density = F.softplus(raw[:, 0] + self.config.density_bias)
        return density, torch.sigmoid(raw[:, 1:])

    def total_variation(self) -> torch.Tensor:
        return sum(_tv(p) for p in [*self.space, *self.time]) / (2 * len(self.space))

    def time_smoothness(self) -> torch.Tensor:
        """Mean squared second difference along time (the planes' H axis)."""
        total = 0.0
        for p in self.time:
            second = p[:, :, 2:] - 2 * p[:, :, 1:-1] + p[:, :, :-2]
            total = total + second.square().mean()
        return total / len(self.time)

    def static_l1(self) -> torch.Tensor:
        return sum((1 - p).abs().mean() for p in self.time) / len(self.time)


def sample_plane(plane: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of `plane` [1, C, H, W] at `uv` [N, 2] in [-1, 1] (u along W, v along H;
    the corners at -1 and 1; outside: the border's value) -> [N, C]."""
    grid = uv.view(1, 1, -1, 2).to(plane.dtype)
    out = F.grid_sample(plane, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].transpose(0, 1)


def _tv(p: torch.Tensor) -> torch.Tensor:
    return (p[..., 1:, :] - p[..., :-1, :]).square().mean() + (
        p[..., :, 1:] - p[..., :, :-1]
    ).square().mean()
