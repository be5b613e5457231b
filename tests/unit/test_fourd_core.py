"""herd/fourd: the pieces MAV3D's optimisation is made of, each against a direct computation. SDS's
stop-gradient loss has gradient w(t) (eps_hat - eps) / batch; the HexPlane lookup equals a
bilinear interpolation written out; volume rendering of a uniform density gives opacity
1 - exp(-sigma d); the regularisers on planes whose values are known; the oracle prior's SDS pull
is w sqrt(a) / sqrt(1 - a) (x - x*); cameras look at the origin."""

from __future__ import annotations

import math

import torch

from herd.fourd.analytic import BallScene, OraclePrior
from herd.fourd.hexplane import FieldConfig, HexPlaneField, sample_plane
from herd.fourd.rendering import Camera, box_bounds, composite, render_rays
from herd.fourd.sds import add_noise, guided, sds_loss_from, sds_step


class FixedPrior:
    """A prior whose noise prediction is a fixed function of its input (no autograd into it)."""

    def __init__(self) -> None:
        self.alphas_cumprod = torch.linspace(0.99, 0.01, 100)

    @staticmethod
    def encode(pixels):
        return pixels * 2 - 1

    @staticmethod
    def predict_noise(noisy, t, condition):
        return torch.tanh(noisy) * condition


def test_sds_gradient_is_weighted_noise_residual():
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 2, 5, 5, generator=gen, requires_grad=True)
    eps_hat, noise = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    weight = torch.tensor([0.1, 0.5, 0.9])
    loss, grad = sds_loss_from(latents, eps_hat, noise, weight)
    loss.backward()
    expected = weight.view(3, 1, 1, 1, 1) * (eps_hat - noise) / 3
    torch.testing.assert_close(latents.grad, expected)
    torch.testing.assert_close(grad / 3, expected)


def test_sds_step_draws_timesteps_and_noise_as_documented():
    prior, condition = FixedPrior(), torch.tensor(0.7)
    pixels = torch.rand(2, 3, 4, 4, requires_grad=True)
    step = sds_step(prior, pixels, condition, torch.Generator().manual_seed(1), (0.2, 0.5))
    assert all(20 <= int(t) <= 50 for t in step.t)
    step.loss.backward()
    # redo the draw by hand with the same generator: the gradient reaching the pixels
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(20, 51, (2,), generator=gen)
    noise = torch.randn(2, 3, 4, 4, generator=gen)
    x = pixels.detach() * 2 - 1
    noisy = add_noise(x, noise, t, prior.alphas_cumprod)
    w = (1 - prior.alphas_cumprod[t]).view(2, 1, 1, 1)
    expected = (
        2 * w * (prior.predict_noise(noisy, t, condition) - noise) / 2
    )  # d latents/d pixels = 2
    torch.testing.assert_close(pixels.grad, expected)


def test_guidance_convention():
    u, c = torch.tensor([1.0]), torch.tensor([3.0])
    assert float(guided(u, c, 1.0)) == 3.0  # scale 1: the conditional prediction alone
    assert float(guided(u, c, 7.5)) == 1.0 + 7.5 * 2.0


def _bilinear(plane: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """plane [1, C, H, W] at (u along W, v along H) in [-1, 1], corners at the texel centres."""
    _, _, H, W = plane.shape
    x, y = (u + 1) / 2 * (W - 1), (v + 1) / 2 * (H - 1)
    x0, y0 = min(math.floor(x), W - 2), min(math.floor(y), H - 2)
    fx, fy = x - x0, y - y0
    p = plane[0]
    return (
        p[:, y0, x0] * (1 - fx) * (1 - fy) + p[:, y0, x0 + 1] * fx * (1 - fy)
        + p[:, y0 + 1, x0] * (1 - fx) * fy + p[:, y0 + 1, x0 + 1] * fx * fy
    )  # fmt: skip


def test_plane_lookup_is_bilinear_interpolation():
    plane = torch.randn(1, 5, 7, 9, generator=torch.Generator().manual_seed(2))
    uv = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.13, -0.77], [-0.5, 0.42], [0.999, 0.0]])
    out = sample_plane(plane, uv)
    for i, (u, v) in enumerate(uv.tolist()):
        torch.testing.assert_close(out[i], _bilinear(plane, u, v), rtol=1e-5, atol=1e-6)


def test_field_features_multiply_pairs_and_concatenate():
    field = HexPlaneField(FieldConfig(features=3, resolution=4, time_resolution=5, scales=(1, 2)))
    with torch.no_grad():
        for p in field.time:
            p.uniform_(0.5, 1.5)
    points, times = torch.tensor([[0.2, -0.4, 0.7]]), torch.tensor([0.3])
    coords = torch.tensor([[0.2, -0.4, 0.7, 0.3]])
    pairs = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((1, 2), (0, 3)))
    expected = []
    for k, (space, time) in enumerate(pairs * 2):
        a = _bilinear(field.space[k].detach(), *coords[0, list(space)].tolist())
        b = _bilinear(field.time[k].detach(), *coords[0, list(time)].tolist())
        expected.append(a * b)
    torch.testing.assert_close(
        field.features(points, times)[0].detach(), torch.cat(expected), rtol=1e-5, atol=1e-6
    )
    density, colour = field(points, times)
    assert density.shape == (1,) and colour.shape == (1, 3) and float(density.detach()) >= 0


def test_uniform_density_gives_one_minus_exp_opacity():
    sigma = 0.8

    def uniform(points, times):
        return torch.full((points.shape[0],), sigma), torch.zeros(points.shape[0], 3)

    origins = torch.tensor([[0.0, 0.0, 3.0], [0.3, -0.2, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    rgb, opacity = render_rays(uniform, origins, dirs, 0.0, samples=16, background=1.0)
    expected = 1 - math.exp(-sigma * 2.0)  # the box is 2 deep along z
    torch.testing.assert_close(opacity, torch.full((2,), expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rgb, torch.full((2, 3), 1 - expected), rtol=1e-5, atol=1e-6)

    # a slab of thickness d = 0.5 (|z| < 0.25) with many samples: 1 - exp(-sigma d)
    def slab(points, times):
        inside = points[:, 2].abs() < 0.25
        return sigma * inside.float(), torch.ones(points.shape[0], 3)

    _, opacity = render_rays(slab, origins[:1], dirs[:1], 0.0, samples=4000)
    assert abs(float(opacity) - (1 - math.exp(-sigma * 0.5))) < 1e-3
    # a ray that misses the box sees the background only
    rgb, opacity = render_rays(uniform, torch.tensor([[3.0, 3.0, 3.0]]),
                               torch.tensor([[0.0, 0.0, -1.0]]), 0.0)  # fmt: skip
    assert float(opacity) == 0.0 and torch.equal(rgb, torch.ones(1, 3))


def test_compositing_weights_front_to_back():
    density = torch.tensor([[1.0, 0.0, 2.0]])
    colour = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    rgb, opacity, weights = composite(density, colour, torch.full((1, 3), 0.5), background=0.0)
    a0, a2 = 1 - math.exp(-0.5), 1 - math.exp(-1.0)
    torch.testing.assert_close(weights[0], torch.tensor([a0, 0.0, (1 - a0) * a2]))
    torch.testing.assert_close(rgb[0], torch.tensor([a0, 0.0, (1 - a0) * a2]))
    assert abs(float(opacity[0]) - (a0 + (1 - a0) * a2)) < 1e-6


@torch.no_grad()
def test_regularisers_on_known_planes():
    field = HexPlaneField(FieldConfig(features=1, resolution=4, time_resolution=4, scales=(1,)))
    assert float(field.static_l1()) == 0.0 and float(field.time_smoothness()) == 0.0  # all ones
    with torch.no_grad():
        for p in field.space:  # a ramp of step 0.1 along W, constant along H
            p.copy_(torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4) * 0.1)
        for p in field.time:  # 1.5 everywhere, then a parabola along time: second difference 2c
            p.fill_(1.5)
    assert abs(float(field.static_l1()) - 0.5) < 1e-6
    # space planes: W-differences 0.01 each, H-differences 0; time planes: 0 -> mean of both
    assert abs(float(field.total_variation()) - (0.01 + 0.0) / 2) < 1e-6
    with torch.no_grad():
        for p in field.time:
            p.copy_((torch.arange(4.0) ** 2 * 0.05).view(1, 1, 4, 1).expand(1, 1, 4, 4))
    assert abs(float(field.time_smoothness()) - 0.1**2) < 1e-6


def test_oracle_sds_pulls_renders_towards_the_scene():
    prior = OraclePrior()
    x = torch.rand(1, 3, 6, 6) * 2 - 1
    target = torch.rand(1, 3, 6, 6) * 2 - 1
    t, noise = torch.tensor([500]), torch.randn(1, 3, 6, 6)
    noisy = add_noise(x, noise, t, prior.alphas_cumprod)
    a = prior.alphas_cumprod[500]
    w = 1 - a
    _, grad = sds_loss_from(x, prior.predict_noise(noisy, t, target), noise, w.view(1))
    torch.testing.assert_close(
        grad, w * a.sqrt() / (1 - a).sqrt() * (x - target), atol=1e-5, rtol=1e-4
    )


def test_cameras_and_the_scene():
    camera = Camera(azimuth=90.0, elevation=0.0, radius=3.0)
    torch.testing.assert_close(camera.position(), torch.tensor([3.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    origins, dirs = camera.rays(2, 2)  # the four pixel rays straddle the centre symmetrically
    torch.testing.assert_close(dirs.mean(0) / dirs.mean(0).norm(), torch.tensor([-1.0, 0, 0]))
    near, far, hit = box_bounds(origins, dirs)
    assert bool(hit.all()) and bool((far > near).all())
    scene = BallScene()
    image = scene.render(Camera(0.0, 0.0), 0.0, 16)
    assert image.shape == (3, 16, 16) and float(image.min()) < 0.5 < float(image.max())
    assert not torch.equal(image, scene.render(Camera(0.0, 0.0), 0.8, 16))  # it moves


def test_a_clip_in_one_call_equals_its_frames_one_by_one():
    """optimise.render_views sends every frame's rays at once, each with its frame's time: the
    same renders as one render_rays call per frame, and the same stratified draws."""
    from herd.fourd.optimise import render_views

    torch.manual_seed(0)
    field = HexPlaneField(FieldConfig())
    with torch.no_grad():
        for p in field.parameters():
            p.normal_(0, 0.5)
    views = [[(Camera(30.0 + 20 * i, 15.0), -1 + 2 * i / 3) for i in range(4)] for _ in range(2)]
    batch = render_views(field, views, 8, 16, torch.Generator().manual_seed(3))
    assert batch.shape == (2, 3, 4, 8, 8)
    generator = torch.Generator().manual_seed(3)
    for b, frames in enumerate(views):
        for f, (camera, t) in enumerate(frames):
            origins, dirs = camera.rays(8, 8)
            rgb, _ = render_rays(field, origins, dirs, t, samples=16, stratified=True,
                                 generator=generator)  # fmt: skip
            assert torch.allclose(batch[b, :, f], rgb.T.reshape(3, 8, 8), atol=1e-6)
    assert render_views(field, [views[0][:1]], 8, 16, torch.Generator()).shape == (1, 3, 8, 8)
