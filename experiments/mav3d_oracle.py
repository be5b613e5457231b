"""Does score distillation alone recover a dynamic 3D scene (issue 28's measured evidence)?

MAV3D optimises a HexPlane field so that its renders, from moving cameras, score well under a
text-to-video diffusion model. Whether the 4D machinery works (rays, volume rendering, the six
planes, SDS's stop-gradient gradient, the stages) can be measured apart from any diffusion model:
herd's oracle prior (herd/fourd/analytic.py) predicts exactly the noise that points at the renders
of a known scene, a shaded ball moving along a curve, from the same cameras. SDS is the only
signal; the field never sees the scene's geometry. If the optimisation recovers the scene in 4D,
renders from cameras and at times that no training step used match the scene's.

    .venv/bin/python experiments/mav3d_oracle.py            # ~8 minutes on 2 CPU cores
    .venv/bin/python experiments/mav3d_oracle.py --quick    # a smoke test

It runs `herd 4d --oracle` (the CLI, in this process) with MAV3D's three stages, then evaluates
the checkpoint at the end of each stage on held-out views: 12 cameras with azimuths and
elevations from a generator of their own, at times halfway between the training clips' frames.
Reported: PSNR (dB) per stage, against the untrained field; the static stage's field is the
baseline that cannot move (its PSNR at held-out times shows how much of the scene is motion).
Writes OUT/summary.json, OUT/summary.md and OUT/held_out.gif (render | truth at held-out views).
Measured: docs/fourd.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from herd.cli import main as herd_main
from herd.fourd.analytic import BallScene
from herd.fourd.hexplane import FieldConfig, HexPlaneField
from herd.fourd.optimise import RunSettings, load_field, psnr
from herd.fourd.rendering import Camera, render_image

QUICK = {
    "steps": "4,6,2",
    "resolution": 12,
    "sr_resolution": 16,
    "frames": 3,
    "samples": 12,
    "render_size": 16,
}


def held_out_views(settings: RunSettings, count: int = 12) -> list[tuple[Camera, float]]:
    rng = random.Random(777)
    f = settings.frames
    mids = [-1.0 + 2.0 * (i + 0.5) / (f - 1) for i in range(f - 1)]
    return [
        (Camera(rng.uniform(0, 360), rng.uniform(*settings.elevation)), mids[k % len(mids)])
        for k in range(count)
    ]


@torch.no_grad()
def evaluate(field, scene, views, size: int, samples: int) -> float:
    scores = [psnr(render_image(field, c, t, size, samples=samples), scene.render(c, t, size))
              for c, t in views]  # fmt: skip
    return sum(scores) / len(scores)


def write_gif(field, scene, views, size: int, samples: int, path: Path) -> Path:
    from PIL import Image

    frames = []
    with torch.no_grad():
        for camera, t in views:
            pair = torch.cat([render_image(field, camera, t, size, samples=samples),
                              scene.render(camera, t, size)], dim=2)  # fmt: skip
            pixels = (pair.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            frames.append(Image.fromarray(pixels).resize((4 * pair.shape[2], 4 * size)))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=600, loop=0)
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/mav3d-oracle"))
    p.add_argument("--steps", default="200,500,100", help="static, dynamic, super-res. steps")
    p.add_argument("--resolution", type=int, default=24)
    p.add_argument("--sr-resolution", type=int, default=40)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--render-size", type=int, default=96, help="orbit video and viewer frames")
    p.add_argument("--quick", action="store_true", help="a smoke test of every step")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    run = args.out / "run"
    start = time.time()
    if not (run / "summary.json").is_file():
        flags = ["4d", "a red ball moving along a curve", "--oracle", "--out", str(run),
                 "--steps", args.steps, "--resolution", str(args.resolution),
                 "--sr-resolution", str(args.sr_resolution), "--frames", str(args.frames),
                 "--samples", str(args.samples), "--render-size", str(args.render_size)]  # fmt: skip
        if run.exists():
            flags.append("--resume")
        herd_main(flags)
    minutes = (time.time() - start) / 60
    settings = RunSettings(**{**json.loads((run / "config.json").read_text())})
    settings.elevation = tuple(settings.elevation)
    scene, views = BallScene(), held_out_views(settings)
    size, samples = args.sr_resolution, args.samples
    ends = [sum(settings.steps[: i + 1]) for i in range(3)]
    untrained = HexPlaneField(FieldConfig(**{**settings.field,
                                             "scales": tuple(settings.field["scales"])}))  # fmt: skip
    scores = {"untrained": evaluate(untrained.eval(), scene, views, size, samples)}
    for stage, end in zip(("static", "dynamic", "sr"), ends, strict=True):
        field = load_field(run / "checkpoints" / f"step-{end:06d}")
        scores[stage] = evaluate(field, scene, views, size, samples)
    gif = write_gif(field, scene, views, size, samples, args.out / "held_out.gif")
    summary = {"held_out_psnr_db": scores, "views": len(views), "eval_size": size,
               "settings": {k: getattr(args, k) for k in ("steps", "resolution", "sr_resolution",
                                                          "frames", "samples")},
               "train_minutes": round(minutes, 1), "gif": str(gif)}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = ["| field | held-out PSNR (dB) |", "|---|---:|"]
    table += [f"| {k} | {v:.2f} |" for k, v in scores.items()]
    (args.out / "summary.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"training {minutes:.1f} min; {args.out}/held_out.gif")
    return summary


if __name__ == "__main__":
    main()
