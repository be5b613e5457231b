"""MAV3D's three stages on a HexPlane field, as one resumable run (`herd 4d`).

1. static: the scene at one time, rendered from random cameras and scored by a text-to-image
   prior (single frames); the space-time planes are frozen at 1, so the field is static;
2. dynamic: clips of `frames` frames spanning the whole time range, from a camera sweeping an
   arc of `sweep` degrees at a random azimuth and elevation, scored by the text-to-video prior;
   every plane trains, with the motion regularisers;
3. super-resolution: as 2 at `sr_resolution`, scored by `--sr-prior` (the video prior unless
   another is given: MAV3D fine-tunes with Make-A-Video's super-resolution model, which has no
   open diffusers counterpart).

Each step's loss is SDS (herd/fourd/sds.py) plus `tv` * total variation, and in the dynamic
stages `smooth` * the time smoothness and `static` * the L1 pull towards a static scene. The run
folder holds config.json, metrics.jsonl (a line per logged step) and checkpoints/step-NNNNNN
(field.safetensors, the optimiser's state in optimizer.pt, read back with weights_only=True, and
state.json), written atomically; `resume` continues from the newest one. Every step's randomness is drawn from
a generator seeded by (seed, step), so a resumed run takes the same steps as an unbroken one.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.fourd.hexplane import FieldConfig, HexPlaneField
from herd.fourd.rendering import Camera, render_rays
from herd.fourd.sds import sds_step

STAGES = ("static", "dynamic", "sr")


@dataclass
class RunSettings:
    """What a run is (config.json); a resumed run must match it."""

    prompt: str
    steps: tuple[int, int, int] = (300, 600, 100)  # static, dynamic, super-resolution
    resolution: int = 32  # render side in the static and dynamic stages
    sr_resolution: int = 64
    frames: int = 8  # frames per clip in the dynamic stages
    samples: int = 48  # points per ray
    sweep: float = 30.0  # degrees the camera turns over a clip
    elevation: tuple[float, float] = (-10.0, 40.0)
    radius: float = 3.0
    fov: float = 40.0
    lr: float = 2e-2
    tv: float = 0.1
    smooth: float = 0.1
    static: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 200
    field: dict = field(default_factory=lambda: asdict(FieldConfig()))

    def stage_of(self, step: int) -> str:
        """The stage of global step `step` (0-based)."""
        bounds = [sum(self.steps[: i + 1]) for i in range(3)]
        return STAGES[next((i for i, b in enumerate(bounds) if step < b), 2)]

    @property
    def total_steps(self) -> int:
        return sum(self.steps)


# views: per batch sample a list of (camera, time) frames; a condition source turns them (and the
# render size) into what the stage's prior conditions on (a text embedding, or the oracle's target)
Condition = Callable[[list, int], object]


@dataclass
class StagePrior:
    prior: object
    condition: Condition
    clips: bool = True  # the prior scores clips (a video prior) rather than single frames


def sample_views(
    s: RunSettings, stage: str, rng: random.Random, clips: bool = True
) -> list[list[tuple[Camera, float]]]:
    """One sample's frames for `stage` (module doc). The static stage renders one frame at time 0
    for an image prior, or (`clips`, a video prior) a clip of the still scene at time 0 from
    the sweeping camera."""
    azimuth = rng.uniform(0.0, 360.0)
    elevation = rng.uniform(*s.elevation)
    if stage == "static" and not clips:
        return [[(Camera(azimuth, elevation, s.radius, s.fov), 0.0)]]
    frames = []
    for i in range(s.frames):
        share = i / max(1, s.frames - 1)
        camera = Camera(azimuth + s.sweep * share, elevation, s.radius, s.fov)
        frames.append((camera, 0.0 if stage == "static" else -1.0 + 2.0 * share))
    return [frames]


def render_views(field_, views, size: int, samples: int, generator) -> torch.Tensor:
    """Renders of `views`: [B, 3, H, W] for single frames, [B, 3, F, H, W] for clips. Every
    frame's rays go through the field in one call (each ray with its frame's time): one pass of
    kernels per step rather than one per frame."""
    device = next(field_.parameters()).device
    B, F, P = len(views), len(views[0]), size * size
    rays = [camera.rays(size, size) for frames in views for camera, _ in frames]
    origins = torch.cat([o for o, _ in rays]).to(device)
    dirs = torch.cat([d for _, d in rays]).to(device)
    times = torch.tensor([t for frames in views for _, t in frames]).repeat_interleave(P)
    rgb, _ = render_rays(field_, origins, dirs, times.to(device), samples=samples,
                         stratified=True, generator=generator)  # fmt: skip
    batch = rgb.view(B, F, size, size, 3).permute(0, 4, 1, 2, 3)  # [B, 3, F, H, W]
    return batch[:, :, 0] if F == 1 else batch


class Run:
    """A run folder and its field, optimiser and step (module doc)."""

    def __init__(self, out: Path, settings: RunSettings, device: str = "cpu", resume=False):
        self.out, self.s, self.device = Path(out), settings, torch.device(device)
        self.field = HexPlaneField(FieldConfig(**_field_config(settings.field)), settings.seed)
        self.field.to(self.device)
        self.optimizer = torch.optim.Adam(self.field.parameters(), lr=settings.lr)
        self.step = 0
        saved = self.out / "config.json"
        if resume:
            if not saved.is_file():
                raise HerdError(f"{self.out}: no run to resume (config.json missing)")
            if json.loads(saved.read_text()) != _jsonable(asdict(settings)):
                raise HerdError(
                    f"{saved}: the run was started with other settings; resume it with the same "
                    "options or start a new --out"
                )
            self._load_latest()
        else:
            if self.out.exists() and any(self.out.iterdir()):
                raise HerdError(f"{self.out}: not empty (pass --resume to continue the run in it)")
            self.out.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(_jsonable(asdict(settings)), indent=2) + "\n")

    def train(self, priors: dict[str, StagePrior], until: int | None = None, progress=True) -> None:
        """Steps from the current one to `until` (default: the end), logging and checkpointing."""
        from tqdm import tqdm

        s = self.s
        until = s.total_steps if until is None else min(until, s.total_steps)
        bar = tqdm(
            total=until, initial=self.step, disable=not progress, desc="herd 4d", unit="step"
        )
        log = (self.out / "metrics.jsonl").open("a")
        try:
            while self.step < until:
                stage = s.stage_of(self.step)
                record = self._one_step(stage, priors[stage])
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(stage=stage, sds=f"{record['sds']:.3g}")
                bar.update(1)
                self.step += 1
                boundary = self.step in {sum(s.steps[: i + 1]) for i in range(3)}
                if self.step % s.checkpoint_every == 0 or boundary or self.step == until:
                    self.save()
        finally:
            log.close()
            bar.close()

    def _one_step(self, stage: str, prior: StagePrior) -> dict:
        s = self.s
        seed = s.seed * 1_000_003 + self.step
        rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
        for p in self.field.time:  # the static stage keeps the scene static
            p.requires_grad_(stage != "static")
        size = s.sr_resolution if stage == "sr" else s.resolution
        start = time.perf_counter()
        views = sample_views(s, stage, rng, prior.clips)
        pixels = render_views(self.field, views, size, s.samples, generator)
        condition = prior.condition(views, size)
        if isinstance(condition, torch.Tensor):  # the oracle's targets, rendered on the CPU
            condition = condition.to(pixels.device)
        # a diffusers prior carries its timestep range (priors.py); the oracle takes SDS's default
        options = {"t_range": prior.prior.t_range} if hasattr(prior.prior, "t_range") else {}
        sds = sds_step(prior.prior, pixels, condition, generator, **options)
        loss = sds.loss + s.tv * self.field.total_variation()
        record = {"step": self.step, "stage": stage, "sds": float(sds.loss.detach()),
                  "t": int(sds.t[0]), "sds_grad_norm": sds.grad_norm}  # fmt: skip
        if stage != "static":
            smooth, static = self.field.time_smoothness(), self.field.static_l1()
            loss = loss + s.smooth * smooth + s.static * static
            record.update(time_smoothness=float(smooth.detach()), static_l1=float(static.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        record.update(loss=float(loss.detach()), seconds=time.perf_counter() - start)
        return record

    # --- checkpoints ---------------------------------------------------------------------------

    def save(self) -> Path:
        from safetensors.torch import save_file

        from herd.atomic_files import write_folder_atomically

        def fill(tmp: Path) -> None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.field.state_dict().items()}
            save_file(state, str(tmp / "field.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": self.step}) + "\n")

        dst = self.out / "checkpoints" / f"step-{self.step:06d}"
        return write_folder_atomically(dst, fill, overwrite=True)

    def _load_latest(self) -> None:
        from safetensors.torch import load_file

        folders = sorted((self.out / "checkpoints").glob("step-*"))
        if not folders:
            return  # nothing saved yet: start from step 0 in the existing folder
        latest = folders[-1]
        self.field.load_state_dict(load_file(str(latest / "field.safetensors")))
        self.optimizer.load_state_dict(
            torch.load(latest / "optimizer.pt", map_location=self.device, weights_only=True)
        )
        self.step = json.loads((latest / "state.json").read_text())["step"]
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file():  # drop lines logged after the checkpoint (a crash between saves)
            kept = [
                x for x in metrics.read_text().splitlines() if json.loads(x)["step"] < self.step
            ]
            metrics.write_text("".join(x + "\n" for x in kept))


def load_field(checkpoint: Path) -> HexPlaneField:
    """The field of a run's checkpoint folder (its run's config.json gives the shape)."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    config = json.loads((checkpoint.parent.parent / "config.json").read_text())
    field_ = HexPlaneField(FieldConfig(**_field_config(config["field"])))
    field_.load_state_dict(load_file(str(checkpoint / "field.safetensors")))
    return field_.eval()


def _field_config(d: dict) -> dict:
    return {**d, "scales": tuple(d["scales"])}


def _jsonable(d):
    return json.loads(json.dumps(d))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean().clamp(min=1e-12)))
