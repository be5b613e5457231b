"""Tiny random diffusers pipelines for herd 4d's tests, saved with `save_pretrained` in the
layouts real ones have (no downloads): a text-to-video `TextToVideoSDPipeline` (ModelScope's)
and a text-to-image `StableDiffusionPipeline`, each with a VAE that downsamples 8x, a one-layer
CLIP text encoder and a CLIP tokenizer over a byte alphabet (`tiny_clip_tokenizer`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table (CLIP's BPE alphabet), written out."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_clip_tokenizer(folder: Path):
    """A CLIPTokenizer with every byte (and byte + end-of-word) as a token and no merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=16)  # fmt: skip


def _parts(root: Path, seed: int):
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(root / "tokenizer-files")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(tokenizer) - 2,
        eos_token_id=len(tokenizer) - 1,
    ))  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=2, sample_size=32,
    )  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return tokenizer, text, vae, scheduler


def tiny_video_pipeline(folder: Path, seed: int = 0) -> Path:
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    tokenizer, text, vae, scheduler = _parts(folder.parent / f".{folder.name}-parts", seed)
    unet = UNet3DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )  # fmt: skip
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                 scheduler=scheduler)  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def tiny_image_pipeline(folder: Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer, text, vae, scheduler = _parts(folder.parent / f".{folder.name}-parts", seed)
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder
