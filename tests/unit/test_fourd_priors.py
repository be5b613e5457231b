"""herd/fourd/priors.py on tiny random diffusers pipelines saved with save_pretrained
(tests/fourd_pipelines.py): the folders load as video and image priors; encoding gives the VAE's
latents ([B, 4, F, H/8, W/8] for clips, frame by frame) with gradients reaching the renders; the
noise prediction is classifier-free guidance over two U-Net predictions, equal to two separate
calls; an SDS step gives finite, nonzero gradients; a repo id resolves through the local Hugging
Face cache only; wrong folders are one line."""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest
import torch

from herd.errors import HerdError
from herd.fourd.priors import (
    DiffusersImagePrior,
    DiffusersVideoPrior,
    load_prior,
    pipeline_folder,
)
from herd.fourd.sds import sds_step
from tests.fourd_pipelines import tiny_image_pipeline, tiny_video_pipeline


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return tiny_video_pipeline(root / "video"), tiny_image_pipeline(root / "image")


def test_video_prior_encodes_clips_frame_by_frame(pipelines):
    prior = load_prior(str(pipelines[0]), "video")
    assert isinstance(prior, DiffusersVideoPrior)
    clip = torch.rand(2, 3, 3, 32, 32, requires_grad=True)
    latents = prior.encode(clip)
    assert latents.shape == (2, 4, 3, 4, 4)
    with torch.no_grad():  # frame 1 of sample 1, alone through the VAE
        one = prior.vae.encode(clip[1, :, 1][None] * 2 - 1).latent_dist.mean * prior.scaling
    torch.testing.assert_close(latents[1, :, 1], one[0], rtol=1e-5, atol=1e-5)
    latents.sum().backward()
    assert clip.grad is not None and float(clip.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in prior.unet.parameters())  # the prior is frozen


def test_image_prior_encodes_images_with_threestudio_defaults(pipelines):
    prior = load_prior(str(pipelines[1]), "image")
    assert isinstance(prior, DiffusersImagePrior)
    assert prior.guidance_scale == 101.0 and prior.t_range == (0.02, 0.98)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    latents = prior.encode(images)
    assert latents.shape == (2, 4, 4, 4)
    with torch.no_grad():
        direct = prior.vae.encode(images * 2 - 1).latent_dist.mean * prior.vae.config.scaling_factor
    torch.testing.assert_close(latents, direct)
    latents.square().sum().backward()
    assert float(images.grad.abs().sum()) > 0
    with pytest.raises(HerdError, match=r"image prior: pixels \[2, 3, 1, 32, 32\], expected"):
        prior.encode(images.detach()[:, :, None])


def test_guidance_over_two_predictions(pipelines):
    prior = load_prior(str(pipelines[0]), "video", guidance_scale=7.5)
    condition = prior.condition("a corgi playing with a ball", "blurry")
    assert condition.shape[0] == 2
    noisy, t = torch.randn(2, 4, 3, 4, 4), torch.tensor([10, 500])
    eps = prior.predict_noise(noisy, t, condition)
    with torch.no_grad():
        u = prior.unet(noisy, t, encoder_hidden_states=condition[:1].expand(2, -1, -1)).sample
        c = prior.unet(noisy, t, encoder_hidden_states=condition[1:].expand(2, -1, -1)).sample
    torch.testing.assert_close(eps, u + 7.5 * (c - u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        prior.alphas_cumprod[0], torch.tensor(1 - 0.00085), rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("kind", ["video", "image"])
def test_an_sds_step_reaches_the_renders(pipelines, kind):
    prior = load_prior(str(pipelines[0 if kind == "video" else 1]), kind)
    shape = (1, 3, 4, 32, 32) if kind == "video" else (1, 3, 32, 32)
    pixels = torch.rand(*shape, requires_grad=True)
    step = sds_step(prior, pixels, prior.condition("a corgi"), torch.Generator().manual_seed(0))
    step.loss.backward()
    assert torch.isfinite(pixels.grad).all() and float(pixels.grad.abs().sum()) > 0
    assert 20 <= int(step.t[0]) <= 980


def test_wrong_folders_are_one_line(pipelines, tmp_path, monkeypatch):
    video, image = pipelines
    with pytest.raises(HerdError, match="a text-to-image pipeline, given as the video prior"):
        pipeline_folder(str(image), "video")
    with pytest.raises(HerdError, match="a text-to-video pipeline, given as the image prior"):
        pipeline_folder(str(video), "image")
    with pytest.raises(HerdError, match="no such folder"):
        pipeline_folder(str(tmp_path / "nothing"), "video")
    (tmp_path / "half").mkdir()
    with pytest.raises(HerdError, match=r"not a diffusers pipeline folder \(no unet/"):
        pipeline_folder(str(tmp_path / "half"), "video")
    (tmp_path / "unet-only" / "unet").mkdir(parents=True)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / "unet-only" / part).mkdir()
    with pytest.raises(HerdError, match=r"unet/config.json: missing"):
        pipeline_folder(str(tmp_path / "unet-only"), "image")
    with pytest.raises(HerdError, match="prior kind 'audio': expected video or image"):
        pipeline_folder(str(video), "audio")
    with pytest.raises(HerdError, match=r"t_range \(0.5, 0.2\): expected"):
        load_prior(str(video), "video", t_range=(0.5, 0.2))
    # the cache directory is read when snapshot_download is called, so this one is empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(HerdError) as error:
        pipeline_folder("damo-vilab/text-to-video-ms-1.7b", "video")
    assert "\n" not in str(error.value)
    assert "not in the Hugging Face cache; herd never downloads at run time" in str(error.value)
    assert "huggingface-cli download damo-vilab/text-to-video-ms-1.7b" in str(error.value)


def test_a_repo_id_resolves_in_the_local_cache_only(pipelines, tmp_path, monkeypatch):
    """A cache laid out as huggingface_hub writes it (models--org--name/refs/main naming the
    snapshot's commit), holding the tiny video pipeline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-t2v"
    shutil.copytree(pipelines[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = pipeline_folder("someone/tiny-t2v", "video")
    assert folder == repo / "snapshots" / commit
    prior = load_prior("someone/tiny-t2v", "video")
    assert prior.encode(torch.rand(1, 3, 2, 16, 16)).shape == (1, 4, 2, 2, 2)
    with pytest.raises(HerdError, match="a text-to-video pipeline, given as the image prior"):
        load_prior("someone/tiny-t2v", "image")
