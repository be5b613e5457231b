"""The diffusion priors of `herd 4d`: diffusers text-to-video and text-to-image pipelines read
from disk, frozen, exposing what SDS needs (herd/fourd/sds.py's `Prior`).

A text-to-video pipeline folder (ModelScope `text-to-video-ms-1.7b`, Zeroscope; diffusers'
`TextToVideoSDPipeline` layout) has unet/ (`UNet3DConditionModel`), vae/ (`AutoencoderKL`),
text_encoder/ (`CLIPTextModel`), tokenizer/ and scheduler/; a text-to-image one (Stable
Diffusion) the same with a `UNet2DConditionModel`. Components are loaded one by one from the
folder (local files only) and frozen; the noise schedule's cumulative alphas come from the
scheduler's config (its betas).

- `encode(pixels)`: renders in [0, 1], [B, 3, H, W] (image) or [B, 3, F, H, W] (video, encoded
  frame by frame), scaled to [-1, 1] and through the VAE encoder, differentiably (SDS carries its
  gradient back into the renders); the latent distribution's mean times the VAE's scaling factor
  (threestudio samples; the mean gives the same latents every call, one noise source fewer);
  [B, 4, H/8, W/8] or [B, 4, F, H/8, W/8].
- `condition(prompt, negative)`: the text encoder's states for the negative (unconditional) and
  the prompt, computed once.
- `predict_noise(noisy, t, condition)`: one U-Net call on the batch doubled (unconditional,
  conditional), then guidance in diffusers' convention (sds.guided): eps_u + s (eps_c - eps_u).

`DiffusersVideoPrior` and `DiffusersImagePrior` are the two kinds (MAV3D's dynamic and
super-resolution stages score clips, its static stage single frames); `load_prior` picks one
from a folder or a repo id already in the Hugging Face cache (herd never downloads at run time).

Defaults, as threestudio's DreamFusion and text-to-video (Zeroscope/ModelScope) SDS guidance use
them: guidance scale 101 in herd's convention (threestudio's 100: SDS needs far stronger
guidance than sampling's 7.5 to 9), timesteps t ~ U[0.02, 0.98] T (`t_range`, which
herd/fourd/optimise.py passes to sds_step: the ends add almost no signal, t near 0, or only
noise, t near T); float16 weights on a GPU and float32 on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.fourd.sds import guided

KINDS = {"video": "UNet3DConditionModel", "image": "UNet2DConditionModel"}
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
GUIDANCE = 101.0
T_RANGE = (0.02, 0.98)


class DiffusersPrior:
    """A frozen diffusers pipeline of `kind` (module doc); built as one of the two below."""

    kind: str

    def __init__(
        self, folder: Path, device="cpu", dtype=None, guidance_scale=GUIDANCE, t_range=T_RANGE
    ):
        from diffusers import (
            AutoencoderKL,
            DDPMScheduler,
            UNet2DConditionModel,
            UNet3DConditionModel,
        )
        from diffusers.utils import logging as diffusers_logging
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the run's own bar is the one to watch
        diffusers_logging.disable_progress_bar()

        device = torch.device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        self.device, self.dtype = device, dtype
        self.guidance_scale = float(guidance_scale)
        self.t_range = (float(t_range[0]), float(t_range[1]))
        if not 0 <= self.t_range[0] <= self.t_range[1] < 1:
            raise HerdError(f"t_range {t_range}: expected 0 <= low <= high < 1 (fractions of T)")
        unet_class = UNet3DConditionModel if self.kind == "video" else UNet2DConditionModel
        load = {"local_files_only": True, "torch_dtype": dtype}
        self.unet = unet_class.from_pretrained(folder, subfolder="unet", **load)
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **load)
        self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **load)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device).eval().requires_grad_(False)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        self.scaling = float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def condition(self, prompt: str, negative: str = "") -> torch.Tensor:
        """[2, L, D]: the unconditional (negative) and conditional text states."""
        tokens = self.tokenizer(
            [negative, prompt], padding="max_length", truncation=True, return_tensors="pt",
            max_length=self.tokenizer.model_max_length,
        )  # fmt: skip
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        video = self.kind == "video"
        if pixels.dim() != (5 if video else 4):
            shape = "[B, 3, F, H, W]" if video else "[B, 3, H, W]"
            raise HerdError(f"{self.kind} prior: pixels {list(pixels.shape)}, expected {shape}")
        if video:
            B, C, F, H, W = pixels.shape
            pixels = pixels.permute(0, 2, 1, 3, 4).reshape(B * F, C, H, W)
        x = (pixels * 2 - 1).to(self.device, self.dtype)
        latents = self.vae.encode(x).latent_dist.mean * self.scaling
        latents = latents.float()
        if video:
            latents = latents.view(B, F, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
        return latents

    @torch.no_grad()
    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, condition: torch.Tensor):
        B = noisy.shape[0]
        states = torch.cat([condition[:1].expand(B, -1, -1), condition[1:].expand(B, -1, -1)])
        out = self.unet(
            torch.cat([noisy, noisy]).to(self.dtype), torch.cat([t, t]).to(self.device),
            encoder_hidden_states=states.to(self.dtype),
        ).sample.float()  # fmt: skip
        eps_uncond, eps_cond = out.chunk(2)
        return guided(eps_uncond, eps_cond, self.guidance_scale)


class DiffusersVideoPrior(DiffusersPrior):
    """A text-to-video pipeline (ModelScope, Zeroscope): encodes clips [B, 3, F, H, W]."""

    kind = "video"


class DiffusersImagePrior(DiffusersPrior):
    """A text-to-image pipeline (Stable Diffusion): encodes images [B, 3, H, W]."""

    kind = "image"


PRIORS = {"video": DiffusersVideoPrior, "image": DiffusersImagePrior}


def pipeline_folder(path_or_name: str, kind: str) -> Path:
    """The pipeline folder a path or a cached Hugging Face repo id names, checked to be a
    diffusers pipeline of `kind`; one line naming what is wrong otherwise."""
    if kind not in KINDS:
        raise HerdError(f"prior kind {kind!r}: expected video or image")
    folder = Path(path_or_name).expanduser()
    if not folder.exists():
        if folder.is_absolute() or path_or_name.count("/") != 1:
            raise HerdError(f"{path_or_name}: no such folder (a diffusers pipeline folder)")
        folder = _cached(path_or_name)
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise HerdError(
            f"{folder}: not a diffusers pipeline folder (no {missing[0]}/; expected "
            f"{', '.join(p + '/' for p in PARTS)})"
        )
    config = folder / "unet" / "config.json"
    if not config.is_file():
        raise HerdError(f"{config}: missing (a diffusers U-Net's config, naming its class)")
    found = json.loads(config.read_text()).get("_class_name")
    if found != KINDS[kind]:
        other = next((k for k, v in KINDS.items() if v == found), None)
        what = f"a text-to-{other} pipeline" if other else f"a pipeline whose U-Net is {found}"
        raise HerdError(
            f"{folder}: {what}, given as the {kind} prior (expected a {KINDS[kind]} in unet/)"
        )
    return folder


def _cached(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise HerdError(
            f"{repo_id}: not a folder and not in the Hugging Face cache; herd never downloads at "
            f"run time (fetch it first: huggingface-cli download {repo_id})"
        ) from None


def load_prior(
    path_or_name: str,
    kind: str,
    device="cpu",
    dtype=None,
    guidance_scale: float = GUIDANCE,
    t_range: tuple[float, float] = T_RANGE,
) -> DiffusersPrior:
    """A `DiffusersVideoPrior` or `DiffusersImagePrior` (`kind` "video" or "image") from a
    pipeline folder or a Hugging Face repo id in the local cache."""
    folder = pipeline_folder(path_or_name, kind)
    return PRIORS[kind](folder, device, dtype, guidance_scale, t_range)
