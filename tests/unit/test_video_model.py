"""herd/model/video_model.py: Llama 3's video adapter on a tiny vision model. Video
cross-attention layers stand before every `every`-th image cross-attention layer; rows without a
clip, and tokens before <|video|>, compute exactly what the vision model computes; frame order
matters (the aggregator's time embeddings); generation with the cached clip equals full
forwards; the parameter count is exact; a mismatched prompt or clip is one clear error."""

from __future__ import annotations

import pytest
import torch

import herd
from herd.errors import HerdError
from herd.model.config import VisionConfig
from herd.model.families import build_model
from herd.model.multimodal import VisionLanguageModel
from herd.model.video_config import VideoConfig
from herd.model.video_model import VideoLanguageModel, Videos

VISION = VisionConfig(
    dim=16, n_layers=2, n_global_layers=1, n_heads=2, ffn_dim=32, image_size=28, patch_size=14,
    max_tiles=2, aspect_ratios=((1, 1), (1, 2), (2, 1)), feature_layers=(0, 1),
    cross_attention_layers=(0, 2, 4, 6, 8),
)  # fmt: skip
VIDEO = VideoConfig(max_frames=6, merge=4, latents=3, layers=1, n_heads=2, every=4)
CONFIG = herd.ModelConfig(
    dim=32, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=50, ffn_dim=64, max_seq_len=64,
    vision=VISION, video=VIDEO,
)  # fmt: skip
VIDEO_ID = CONFIG.video_token_id


def _model() -> VideoLanguageModel:
    model = build_model(CONFIG, seed=1).eval()
    with torch.no_grad():  # trained-looking gates, so the clip changes the output
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.uniform_(0.5, 1.5)
            elif name.startswith("video_"):  # trained-looking video parts: a clip matters
                p.mul_(8.0)
    return model


def _clip(batch: int = 1, frames: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_layout_ids_and_exact_parameter_count():
    model = _model()
    assert type(model) is VideoLanguageModel and isinstance(model, VisionLanguageModel)
    assert CONFIG.video_token_id == CONFIG.vocab_size + VISION.extra_tokens
    # five image cross-attention layers, a video layer before the first and the fifth
    assert len(model.video_cross_layers) == 2
    assert CONFIG.num_params() == sum(p.numel() for p in model.parameters())
    assert herd.ModelConfig.from_dict(CONFIG.to_dict()) == CONFIG
    assert "video" not in CONFIG.replace(video=None).to_dict()


def test_video_layers_run_before_every_fourth_image_layer():
    model, order = _model(), []
    for name, module in [
        *((f"video{j}", m) for j, m in enumerate(model.video_cross_layers)),
        *((f"image{k}", m) for k, m in enumerate(model.cross_layers)),
    ]:
        module.register_forward_hook(lambda *_, name=name: order.append(name))
    from herd.model.multimodal import Images

    tokens = torch.tensor([[model.config.image_token_id, VIDEO_ID, 1, 5, 7]])
    images = Images(torch.randn(1, 1, 2, 3, 28, 28), torch.tensor([[1]]))
    with torch.no_grad():
        model(tokens, images=images, videos=Videos(_clip(), torch.tensor([6])))
    assert order == ["video0", "image0", "image1", "image2", "image3", "video1", "image4"]
    order.clear()  # without pictures the image layers add exact zeros and are skipped
    with torch.no_grad():
        model(tokens[:, 1:], videos=Videos(_clip(), torch.tensor([6])))
    assert order == ["video0", "video1"]


def test_rows_without_a_clip_and_tokens_before_it_are_the_vision_model():
    model = _model()
    vision = build_model(CONFIG.replace(video=None), seed=1).eval()
    vision.load_state_dict(model.state_dict(), strict=False)
    tokens = torch.tensor([[1, 3, VIDEO_ID, 5, 7], [1, 2, 3, 4, 5]])
    videos = Videos(_clip(2), torch.tensor([6, 0]))
    with torch.no_grad():
        out = model(tokens, videos=videos)
        reference = vision(tokens.clamp(max=49))
        assert torch.equal(out[1], reference[1])  # no clip: the vision model's logits exactly
        assert torch.equal(out[0, :2], reference[0, :2])  # before <|video|>
        assert (out[0, 3:] - reference[0, 3:]).abs().max() > 1e-3  # after it, the clip counts
        # text alone through the video model is the vision model too (batch 1: other kernels)
        torch.testing.assert_close(model(tokens[1:]), reference[1:], rtol=0, atol=1e-6)


def test_frame_order_and_padding():
    model = _model()
    tokens = torch.tensor([[VIDEO_ID, 1, 5, 7]])
    clip = _clip()
    with torch.no_grad():
        out = model(tokens, videos=Videos(clip, torch.tensor([6])))
        reversed_ = model(tokens, videos=Videos(clip.flip(1), torch.tensor([6])))
        assert (out - reversed_).abs().max() > 1e-3  # played backwards is another clip
        # frames past the count are padding: their pixels do not matter
        short = model(tokens, videos=Videos(clip, torch.tensor([3])))
        noisy = clip.clone()
        noisy[:, 3:] = 5.0
        assert torch.allclose(short, model(tokens, videos=Videos(noisy, torch.tensor([3]))))


def test_generation_reads_the_cached_clip():
    model = _model()
    prompt = torch.tensor([[VIDEO_ID, 1, 5, 7, 9]])
    videos = Videos(_clip(), torch.tensor([6]))
    new = herd.generate(model, prompt, max_new_tokens=6, videos=videos)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            step = model(ids, videos=videos)[0, -1].argmax().view(1, 1)
            ids = torch.cat([ids, step], dim=1)
    assert new[0].tolist() == ids[0, 5:].tolist()
    # another clip, other logits
    with torch.no_grad():
        other = model(prompt, videos=Videos(_clip(seed=7), videos.counts))
        assert (other - model(prompt, videos=videos)).abs().max() > 1e-3


def test_images_and_a_clip_in_one_prompt():
    from herd.model.multimodal import Images

    model = _model()
    tokens = torch.tensor([[model.config.image_token_id, VIDEO_ID, 1, 5]])
    images = Images(torch.randn(1, 1, 2, 3, 28, 28), torch.tensor([[1]]))
    videos = Videos(_clip(), torch.tensor([6]))
    with torch.no_grad():
        both = model(tokens, images=images, videos=videos)
        assert both.shape == (1, 4, 50)
    new = herd.generate(model, tokens, max_new_tokens=3, images=images, videos=videos)
    assert new.shape == (1, 3)


@pytest.mark.parametrize(
    ("tokens", "counts", "frames", "message"),
    [
        ([[VIDEO_ID, 1, 2]], None, 6, "<|video|> tokens but no video"),
        ([[1, 2, 3]], [6], 6, "a clip without a <|video|> token"),
        ([[VIDEO_ID, VIDEO_ID, 2]], [6], 6, "a row shows one clip at most"),
        ([[VIDEO_ID, 1, 2]], [6], 7, "more than the model takes"),
        ([[VIDEO_ID, 1, 2]], [0], 6, "a <|video|> token without a clip"),
    ],
)
def test_mismatches_are_one_clear_error(tokens, counts, frames, message):
    model = _model()
    videos = None if counts is None else Videos(_clip(frames=frames), torch.tensor(counts))
    with pytest.raises(HerdError, match=message.replace("|", r"\|")):
        model(torch.tensor(tokens), videos=videos)


def test_config_errors():
    with pytest.raises(HerdError, match="a video model needs 'vision' too"):
        CONFIG.replace(vision=None)
    with pytest.raises(HerdError, match="n_heads 5 must divide"):
        CONFIG.replace(video=VideoConfig(n_heads=5))
    with pytest.raises(HerdError, match=r"unknown key 'video.frames'"):
        herd.ModelConfig.from_dict({**CONFIG.to_dict(), "video": {"frames": 8}})
    with pytest.raises(HerdError, match=r"must hold \[1, 1\]"):
        CONFIG.replace(
            vision=VisionConfig(aspect_ratios=((1, 2),), max_tiles=2, cross_attention_layers=(1,))
        )


def test_media_come_with_the_prefill():
    """With a cache, a clip or pictures arrive at position 0 only, and a later chunk cannot
    show a picture the cache does not hold."""
    from herd.model.multimodal import Images
    from herd.model.video_model import VideoKVCache

    model = _model()
    image_id = model.config.image_token_id
    videos = Videos(_clip(), torch.tensor([6]))
    images = Images(torch.randn(1, 1, 2, 3, 28, 28), torch.tensor([[1]]))
    with torch.no_grad():
        cache = VideoKVCache(CONFIG, 1, 16, "cpu", torch.float32)
        model(torch.tensor([[1, 2]]), torch.arange(2), cache)
        with pytest.raises(HerdError, match="videos come with the prefill, from position 0"):
            model(torch.tensor([[VIDEO_ID, 3]]), torch.tensor([2, 3]), cache, videos=videos)
        with pytest.raises(HerdError, match="images come with the prefill, from position 0"):
            model(torch.tensor([[image_id, 3]]), torch.tensor([2, 3]), cache, images=images)
        cache = VideoKVCache(CONFIG, 1, 16, "cpu", torch.float32)
        model(torch.tensor([[image_id, 1]]), torch.arange(2), cache, images=images)
        with pytest.raises(HerdError, match="images come with the prefill"):
            model(torch.tensor([[image_id, 3]]), torch.tensor([2, 3]), cache)
