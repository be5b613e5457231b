"""What a finished 4D run shows: an orbit over time as MP4 and GIF, a static viewer page that
scrubs time and angle, a mesh per time step (marching cubes, optional), and the loss curve.

  renders/orbit.mp4, renders/orbit.gif   the camera circles once while time runs from -1 to 1
  viewer/index.html, viewer/frames/      `angles` x `times` renders and a page with two sliders
                                         (plain HTML and JavaScript: open it from the folder)
  meshes/t-K.obj                         the surface where density crosses `level`, per time
                                         step, with vertex colours (OBJ's common v x y z r g b)
  plots/loss.png                         SDS and total loss per step, the stages marked
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch

from herd.fourd.rendering import Camera, render_image


@torch.no_grad()
def orbit_frames(field, size: int, count: int = 48, elevation: float = 15.0, radius=3.0, fov=40.0):
    """`count` RGB uint8 frames [size, size, 3]: azimuth 0 -> 360, time -1 -> 1."""
    frames = []
    for i in range(count):
        share = i / max(1, count - 1)
        camera = Camera(360.0 * i / count, elevation, radius, fov)
        image = render_image(field, camera, -1.0 + 2.0 * share, size)
        frames.append(_to_uint8(image))
    return frames


def write_orbit(field, folder: Path, size: int, count: int = 48, **camera) -> list[Path]:
    """renders/orbit.mp4 and renders/orbit.gif."""
    from PIL import Image

    from herd.data.video import write_video

    frames = orbit_frames(field, size + size % 2, count, **camera)
    folder.mkdir(parents=True, exist_ok=True)
    mp4 = write_video(frames, folder / "orbit.mp4", fps=12)
    gif = folder / "orbit.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=80, loop=0)
    return [mp4, gif]


VIEWER = """<!doctype html>
<html><head><meta charset="utf-8"><title>herd 4d: {prompt}</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{width:{show}px;height:{show}px;
image-rendering:pixelated;border:1px solid #ccc}} label{{display:block;margin:.6em 0}}</style>
</head><body>
<h1>{prompt}</h1>
<img id="view" src="frames/a0_t0.png" alt="render">
<label>angle <input id="angle" type="range" min="0" max="{last_angle}" value="0">
<span id="angle_value"></span></label>
<label>time <input id="time" type="range" min="0" max="{last_time}" value="0">
<span id="time_value"></span></label>
<script>
const angles = {angles}, times = {times};
function show() {{
  const a = document.getElementById("angle").value, t = document.getElementById("time").value;
  document.getElementById("view").src = "frames/a" + a + "_t" + t + ".png";
  document.getElementById("angle_value").textContent = angles[a] + " degrees";
  document.getElementById("time_value").textContent = "t = " + times[t].toFixed(2);
}}
document.getElementById("angle").oninput = show;
document.getElementById("time").oninput = show;
show();
</script></body></html>
"""


@torch.no_grad()
def write_viewer(field, folder: Path, prompt: str, size: int, angles=12, times=8) -> Path:
    """viewer/index.html and its `angles` x `times` frames."""
    from PIL import Image

    frames = folder / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    azimuths = [round(360.0 * a / angles, 1) for a in range(angles)]
    stamps = [-1.0 + 2.0 * k / max(1, times - 1) for k in range(times)]
    for a, azimuth in enumerate(azimuths):
        for k, t in enumerate(stamps):
            image = render_image(field, Camera(azimuth, 15.0), t, size)
            Image.fromarray(_to_uint8(image)).save(frames / f"a{a}_t{k}.png")
    page = VIEWER.format(
        prompt=_escape(prompt), show=max(256, size), last_angle=angles - 1, last_time=times - 1,
        angles=json.dumps(azimuths), times=json.dumps(stamps),
    )  # fmt: skip
    index = folder / "index.html"
    index.write_text(page, "utf-8")
    return index


@torch.no_grad()
def write_meshes(field, folder: Path, times: int = 4, grid: int = 64, level: float = 5.0):
    """meshes/t-K.obj for `times` times in [-1, 1]: marching cubes (scikit-image) on the
    density sampled on a `grid`^3 lattice over the box. A time whose density never reaches
    `level` gets no file."""
    from skimage.measure import marching_cubes

    folder.mkdir(parents=True, exist_ok=True)
    axis = torch.linspace(-1, 1, grid)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    written = []
    for k in range(times):
        t = -1.0 + 2.0 * k / max(1, times - 1)
        density = torch.cat([field(chunk, torch.full((len(chunk),), t))[0]
                             for chunk in points.split(65536)])  # fmt: skip
        volume = density.view(grid, grid, grid).numpy()
        if volume.max() < level or volume.min() > level:
            continue
        verts, faces, _, _ = marching_cubes(volume, level=level)
        xyz = torch.from_numpy(verts.copy()).float() / (grid - 1) * 2 - 1
        colour = field(xyz, torch.full((len(xyz),), t))[1].numpy()
        lines = [
            f"v {x:.5f} {y:.5f} {z:.5f} {r:.4f} {g:.4f} {b:.4f}"
            for (x, y, z), (r, g, b) in zip(xyz.tolist(), colour.tolist(), strict=True)
        ]
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces.tolist()]  # fmt: skip
        path = folder / f"t-{k}.obj"
        path.write_text(f"# herd 4d, time {t:.3f}\n" + "\n".join(lines) + "\n")
        written.append(path)
    return written


def plot_losses(run: Path) -> Path:
    """plots/loss.png from metrics.jsonl: SDS and total loss per step (a moving average), the
    stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = np.array([r["step"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key in ("sds", "loss"):
        values = np.array([r[key] for r in rows])
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=key)
    for a, b in itertools.pairwise(rows):
        if a["stage"] != b["stage"]:
            ax.axvline(b["step"], color="grey", linestyle=":")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("herd 4d: score distillation")
    path = run / "plots" / "loss.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
