"""`herd 4d PROMPT --prior VIDEO_PIPELINE --out DIR`: MAV3D's three stages (herd/fourd/optimise.py)
with the diffusion priors of herd/fourd/priors.py, then the run's renders, viewer page, loss plot
and, with --mesh, meshes. `--oracle` replaces the priors by the exact oracle of an analytic
moving ball (herd/fourd/analytic.py) and reports PSNR on cameras and times never trained on."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from herd.errors import HerdError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what the scene shows, e.g. 'a corgi playing with a ball'")
    p.add_argument(
        "--prior",
        metavar="PATH_OR_NAME",
        help="a diffusers text-to-video pipeline (ModelScope text-to-video-ms-1.7b, Zeroscope): "
        "a local folder or a Hugging Face repo id already in your cache (herd never downloads)",
    )
    p.add_argument(
        "--image-prior",
        metavar="PATH_OR_NAME",
        help="a diffusers text-to-image pipeline (Stable Diffusion) for the static stage; without "
        "it the static stage scores still clips with the video prior",
    )
    p.add_argument(
        "--sr-prior",
        metavar="PATH_OR_NAME",
        help="the prior of the super-resolution stage (default: --prior at --sr-resolution)",
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="no diffusion model: an exact prior whose noise points at an analytic moving ball "
        "(tests the 4D optimisation; the prompt is only a label)",
    )
    p.add_argument("--out", required=True, type=Path, help="the run folder (new, or --resume it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--steps",
        default="300,600,100",
        help="steps of the static, dynamic and super-resolution stages",
    )
    p.add_argument("--resolution", type=int, default=32, help="render side (static, dynamic)")
    p.add_argument("--sr-resolution", type=int, default=64, help="render side (super-res.)")
    p.add_argument("--frames", type=int, default=8, help="frames per rendered clip")
    p.add_argument("--samples", type=int, default=48, help="points per ray")
    p.add_argument("--lr", type=float, default=2e-2, help="Adam learning rate of the field")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance in diffusers' convention (eps_u + s (eps_c - eps_u)); "
        "default: the prior module's",
    )
    p.add_argument("--negative-prompt", default="", help="the unconditional text of guidance")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed of the field and every step")
    p.add_argument("--device", default="cpu", help="torch device (cuda on a GPU)")
    p.add_argument(
        "--render-size", type=int, default=128, help="side of the orbit video and viewer frames"
    )
    p.add_argument("--mesh", action="store_true", help="also write a mesh per time step (OBJ)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def run(args: argparse.Namespace) -> None:
    import torch

    from herd.fourd.optimise import Run, RunSettings, StagePrior
    from herd.fourd.outputs import plot_losses, write_meshes, write_orbit, write_viewer

    steps = _steps(args.steps)
    for name in ("resolution", "sr_resolution", "frames", "samples", "checkpoint_every",
                 "render_size"):  # fmt: skip
        if getattr(args, name) < 1:
            raise HerdError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    if not args.oracle and not args.prior:
        raise HerdError("--prior is required (a text-to-video pipeline), or --oracle")
    if not args.oracle:
        for name in ("resolution", "sr_resolution"):
            if getattr(args, name) % 8:
                raise HerdError(
                    f"--{name.replace('_', '-')} {getattr(args, name)}: a diffusers prior's VAE "
                    "needs a multiple of 8"
                )
    settings = RunSettings(
        prompt=args.prompt, steps=steps, resolution=args.resolution,
        sr_resolution=args.sr_resolution, frames=args.frames, samples=args.samples, lr=args.lr,
        seed=args.seed, checkpoint_every=args.checkpoint_every,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    priors = _oracle_priors() if args.oracle else _diffusers_priors(args)
    run_ = Run(args.out, settings, args.device, resume=args.resume)
    if run_.step < settings.total_steps:
        run_.train({k: StagePrior(*v) for k, v in priors.items()}, progress=not args.no_progress)
    field = run_.field.cpu().eval()
    summary = {"out": str(args.out), "steps": run_.step}
    size = args.render_size
    summary["renders"] = [str(p) for p in write_orbit(field, args.out / "renders", size)]
    summary["viewer"] = str(write_viewer(field, args.out / "viewer", args.prompt, size))
    summary["plot"] = str(plot_losses(args.out))
    if args.mesh:
        summary["meshes"] = [str(p) for p in write_meshes(field, args.out / "meshes")]
    if args.oracle:
        from herd.fourd.analytic import BallScene, held_out_psnr

        summary["held_out_psnr"] = held_out_psnr(field, BallScene(), settings)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}", file=sys.stderr)


def _steps(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or sum(values) < 1:
        raise HerdError(
            f"--steps {text!r}: expected three counts STATIC,DYNAMIC,SR (e.g. 300,600,100)"
        )
    return values


def _oracle_priors() -> dict:
    from herd.fourd.analytic import BallScene, OraclePrior

    scene, prior = BallScene(), OraclePrior()

    def condition(views, size):
        return prior.condition(scene, views, size)

    # single frames for the static stage, as an image prior would score them
    return {"static": (prior, condition, False), "dynamic": (prior, condition, True),
            "sr": (prior, condition, True)}  # fmt: skip


def _diffusers_priors(args) -> dict:
    from herd.fourd.priors import load_prior

    def loaded(name: str, kind: str):
        options = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}
        prior = load_prior(name, kind, args.device, **options)
        text = prior.condition(args.prompt, args.negative_prompt)
        return prior, (lambda views, size: text), kind == "video"

    video = loaded(args.prior, "video")
    static = loaded(args.image_prior, "image") if args.image_prior else video
    sr = loaded(args.sr_prior, "video") if args.sr_prior else video
    return {"static": static, "dynamic": video, "sr": sr}


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """`herd 4d-eval`'s options (herd/fourd/clip_eval.py runs it)."""
    p.add_argument("runs", nargs="+", type=Path, help="herd 4d run folders")
    p.add_argument("--clip", required=True, type=Path, help="a local transformers CLIP folder")
    p.add_argument(
        "--prompts",
        type=Path,
        help="a text file of distractor prompts, one per line, ranked beside the runs' own",
    )
    p.add_argument("--views", type=int, default=8, help="renders per run")
    p.add_argument("--size", type=int, default=224, help="render side in pixels (CLIP's input)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over the runs")
