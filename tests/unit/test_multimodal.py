"""herd/model/multimodal.py with vision.py and cross_attention.py (Llama 3.2 Vision): the gate
test, the image mask on hand-written prompts, cached decoding, bad input, the 11B preset's count.
transformers parity is in tests/parity/test_mllama_hf.py."""

from __future__ import annotations

import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.cli import main
from herd.model.config import VisionConfig
from herd.model.cross_attention import image_visibility
from herd.model.families import build_model
from herd.model.multimodal import ImageKVCache, Images, VisionLanguageModel
from herd.model.transformer import Transformer

VISION = VisionConfig(
    dim=16,
    n_layers=3,
    n_global_layers=2,
    n_heads=2,
    ffn_dim=32,
    image_size=28,
    patch_size=14,
    max_tiles=2,
    aspect_ratios=((1, 1), (1, 2), (2, 1)),
    feature_layers=(0, 2),
    cross_attention_layers=(1, 3),  # before text block 1, and after the last
)
CONFIG = herd.ModelConfig(
    dim=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=64,
    ffn_dim=64,
    max_seq_len=64,
    vision=VISION,
)
IMG = CONFIG.image_token_id  # 64: the first id past the vocabulary


def _model(gates: bool) -> VisionLanguageModel:
    model = build_model(CONFIG, seed=1).eval()
    if gates:  # trained-looking gates, so the images change the logits
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("gate"):
                    p.uniform_(-1.5, 1.5)
    return model


def _images(rows: int = 1, ids=(2, 1)) -> Images:
    """`rows` rows of the images `ids` names (or a list of such per row): aspect-ratio id 2 is
    the 1x2 layout, 1 a single tile, 0 an empty slot."""
    ids = torch.tensor(ids if isinstance(ids[0], list) else [list(ids)] * rows)
    return Images(torch.randn(*ids.shape, 2, 3, 28, 28), ids)


def test_untrained_adapter_is_the_text_model():
    """With every gate at 0 the cross-attention layers add exact zeros: the logits are the text
    model's, bit for bit, images or not."""
    model = _model(gates=False)
    text = Transformer(CONFIG.replace(vision=None)).eval()
    text.load_state_dict({k: v for k, v in model.state_dict().items() if k in text.state_dict()})
    text.init_buffers()
    tokens = torch.tensor([[3, IMG, 5, 6, 7, IMG, 8, 9]])
    with torch.no_grad():  # the text model reads <|image|> as a vocabulary row with its vector
        model.extra_embed.weight[0] = model.embed.weight[11]
        as_text = tokens.masked_fill(tokens == IMG, 11)
        assert torch.equal(model(tokens, images=_images()), text(as_text))
        assert torch.equal(model(as_text), text(as_text))


@pytest.mark.parametrize(
    ("row", "seen"),
    [
        ([1, 1, 1], ["", "", ""]),
        ([IMG, 1, 1], ["0", "0", "0"]),
        ([1, IMG, 1, IMG, 1], ["", "0", "0", "1", "1"]),
        # a run of image tokens: all its images are seen until the next run starts
        ([IMG, IMG, 1, 1, IMG, 1], ["0", "01", "01", "01", "2", "2"]),
        ([1, IMG, IMG], ["", "0", "01"]),
        ([IMG, 1, IMG, IMG, 1], ["0", "0", "1", "12", "12"]),
    ],
)
def test_image_visibility(row, seen):
    visible = image_visibility(torch.tensor([row]), IMG, num_images=3)[0]
    expected = [[str(n) in s for n in range(3)] for s in seen]
    assert visible.tolist() == expected


def test_image_visibility_pads_rows_with_fewer_images():
    tokens = torch.tensor([[IMG, 1, IMG], [1, IMG, 1]])
    visible = image_visibility(tokens, IMG)
    assert visible.shape == (2, 3, 2)
    assert visible[1].tolist() == [[False, False], [True, False], [True, False]]


def test_text_before_the_first_image_is_the_text_models():
    """Rows that see no image get no cross-attention output at all (Meta's rule; transformers
    leaks the images there, #39379): their logits are those of the text before the image."""
    model = _model(gates=True)
    tokens = torch.tensor([[3, 4, 5, IMG, 6, 7], [8, 9, IMG, 10, IMG, 11]])
    with torch.no_grad():
        images = [[2, 0], [3, 1]]  # row 0: one image, 1x2; row 1: a 2x1 and a single tile
        both = model(tokens, images=_images(ids=images))
        other = model(tokens, images=_images(ids=images))  # other pixels
        for row, first in ((0, 3), (1, 2)):
            alone = model(tokens[row : row + 1, :first])
            assert torch.allclose(both[row, :first], alone[0], atol=1e-6, rtol=0)
            assert (both[row, first:] - other[row, first:]).abs().min() > 0  # the images count


def test_cached_decoding_matches_the_full_sequence():
    """Prefill with the images into an ImageKVCache, then one token at a time without them:
    the logits are those of one forward pass over the whole sequence; herd.generate does it."""
    model = _model(gates=True)
    images = _images(rows=2)
    prompt = torch.tensor([[3, IMG, 5, 6, IMG, 7], [IMG, 8, 9, IMG, 10, 11]])
    new = torch.tensor([[12, 13, 14], [15, 16, 17]])
    sequence = torch.cat([prompt, new], dim=1)
    with torch.no_grad():
        full = model(sequence, images=images)
        cache = ImageKVCache(CONFIG, 2, sequence.shape[1], "cpu", torch.float32)
        steps = [model(prompt, torch.arange(6), cache, images=images)]
        for i in range(new.shape[1]):
            steps.append(model(new[:, i : i + 1], torch.tensor([6 + i]), cache))
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5

    ids = herd.generate(model, prompt, max_new_tokens=4, images=images)
    with torch.no_grad():
        greedy = model(torch.cat([prompt, ids[:, :-1]], dim=1), images=images)[:, 5:].argmax(-1)
    assert torch.equal(ids, greedy)


def test_image_tokens_are_not_targets():
    """<|image|> is not in the output layer: as a target it is not counted, like -100."""
    model = _model(gates=True)
    tokens, images = torch.tensor([[3, IMG, 5, 6, IMG, 7]]), _images()
    targets = torch.cat([tokens[:, 1:], torch.tensor([[9]])], dim=1)
    with torch.no_grad():
        loss = model(tokens, images=images, targets=targets)
        masked = model(tokens, images=images, targets=targets.masked_fill(targets == IMG, -100))
    assert torch.equal(loss, masked)


def test_checkpoint_folder_round_trip(tmp_path):
    model = _model(gates=True)
    save_herd_folder(CONFIG, model.state_dict(), tmp_path / "m")
    loaded = herd.load(tmp_path / "m")
    assert isinstance(loaded, VisionLanguageModel) and loaded.config == CONFIG
    tokens, images = torch.tensor([[IMG, 5, 6, IMG, 7]]), _images()
    with torch.no_grad():
        assert torch.equal(loaded(tokens, images=images), model(tokens, images=images))


@pytest.mark.parametrize(
    ("tokens", "images", "message"),
    [
        (
            [[IMG, 5]],
            Images(torch.zeros(1, 1, 3, 3, 28, 28), torch.tensor([[1]])),
            "3 tiles per image, more than the model takes",
        ),
        ([[IMG, 5, IMG]], _images(ids=(1,)), "an <|image|> token without an image"),
        ([[IMG, 5, 6]], _images(ids=(2, 1)), "an image without an <|image|> token"),
        ([[IMG, 5, 6]], None, "<|image|> tokens but no images were given"),
        ([[IMG, 5]], _images(ids=(1, 4)), "aspect_ratio_ids must lie in 0..3"),
    ],
)
def test_bad_input_is_one_clear_error(tokens, images, message):
    model = _model(gates=False)
    with pytest.raises(herd.HerdError, match=message.replace("|", r"\|")) as err:
        model(torch.tensor(tokens), images=images)
    assert "\n" not in str(err.value)


def test_config_round_trip_and_text_configs_unchanged():
    assert herd.ModelConfig.from_dict(CONFIG.to_dict()) == CONFIG
    assert "vision" not in herd.preset("llama3-8b").to_dict()
    bad = CONFIG.to_dict()
    bad["vision"] = {**bad["vision"], "tile_size": 560}
    with pytest.raises(herd.HerdError, match=r"unknown key 'vision\.tile_size'"):
        herd.ModelConfig.from_dict(bad, source="my.json")
    with pytest.raises(herd.HerdError, match="cross_attention_layers"):
        CONFIG.replace(vision=VisionConfig(cross_attention_layers=(1, 9)))
    with pytest.raises(herd.HerdError, match="VisionLanguageModel"):
        Transformer(CONFIG)  # the text model does not silently drop the vision part
    assert type(herd.build_model(CONFIG)) is VisionLanguageModel


def test_counted_parameters_are_the_built_models():
    with torch.device("meta"):
        built = sum(p.numel() for p in VisionLanguageModel(CONFIG).parameters())
    assert CONFIG.num_params() == built


def test_llama32_vision_preset_count(capsys):
    """transformers' MllamaForConditionalGeneration with its default config and 560-pixel tiles
    (the released 11B) counts 10,670,220,835 parameters; so does herd, from the shapes and from
    the module tree built on the meta device."""
    config = herd.preset("llama3.2-11b-vision")
    assert config.num_params() == 10_670_220_835
    with torch.device("meta"):
        built = VisionLanguageModel(config)
    assert sum(p.numel() for p in built.parameters()) == 10_670_220_835
    assert main(["info", "llama3.2-11b-vision"]) == 0
    assert "10,670,220,835" in capsys.readouterr().out
