"""Logit parity with transformers' MllamaForConditionalGeneration (Llama 3.2 Vision), shrunk.

A small Mllama (2 tiles of 28 pixels, 3 + 2 encoder layers, 2 text blocks and 2 cross-attention
layers) with random weights and random, nonzero gates is saved by transformers, converted with
`herd convert --from hf`, and compared in float32 (max abs difference below 1e-4): one image, two
images per row, text before the first image, text alone; converted back with `--to hf`, it loads
in transformers with the same logits.

herd follows Meta's reference where transformers (5.23 here) departs from it, in two places; the
tests undo each in transformers with a forward hook (and show the difference separately):
1. #39379: rows that see no image (text before the first <|image|>) get transformers' attention
   branch (a uniform average over every image token) where Meta zeroes it. It changes those rows
   and, through self-attention, every later one. `_meta_rows` zeroes it.
2. transformers 5.x collects the encoder's `hidden_states[i]` after layer i, so its features are
   the outputs of `intermediate_layers_indices`; Meta's reference (and transformers 4.x) take
   their inputs. `_meta_features` hands transformers the inputs, when the installed version
   takes outputs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

transformers = pytest.importorskip("transformers")

import herd  # noqa: E402
from herd.cli import main  # noqa: E402
from herd.model.cross_attention import image_visibility  # noqa: E402
from herd.model.multimodal import Images, prepare_images  # noqa: E402

processing = pytest.importorskip("transformers.models.mllama.processing_mllama")
modeling = pytest.importorskip("transformers.models.mllama.modeling_mllama")

VOCAB = 256
IMG = VOCAB  # <|image|>: the first id past the vocabulary
TILES = 2
CONFIG = dict(
    vision_config=dict(
        hidden_size=16,
        attention_heads=2,
        intermediate_size=32,
        num_hidden_layers=3,
        num_global_layers=2,
        image_size=28,
        patch_size=14,
        intermediate_layers_indices=[0, 2],
        vision_output_dim=48,
        max_num_tiles=TILES,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    ),
    text_config=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        cross_attention_layers=[1, 3],
        pad_token_id=None,
        max_position_embeddings=128,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
    image_token_index=IMG,
)
# aspect-ratio id 1: one tile; 2: 1x2; 3: 2x1
IMAGE_TILES = {1: 1, 2: 2, 3: 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers' model, herd's converted from its save_pretrained folder, that folder)."""
    torch.manual_seed(0)
    hf_model = transformers.MllamaForConditionalGeneration(transformers.MllamaConfig(**CONFIG))
    with torch.no_grad():  # nonzero gates, and norms and biases that a swap would show
        for name, p in hf_model.named_parameters():
            if "gate" in name:
                p.uniform_(-1.5, 1.5)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    hf_model.eval()
    folder = tmp_path_factory.mktemp("mllama")
    hf_model.save_pretrained(folder / "hf")
    assert main(["convert", str(folder / "hf"), str(folder / "herd"), "--from", "hf"]) == 0
    return hf_model, herd.load(folder / "herd"), folder


def _inputs(rows: list[list[int]], ids: list[list[int]]):
    """Token ids, herd's Images and transformers' inputs (its processor's masks) for `rows`."""
    tokens = torch.tensor(rows)
    ids_t = torch.tensor(ids)
    pixels = torch.randn(*ids_t.shape, TILES, 3, 28, 28)
    tiles = [[IMAGE_TILES.get(i, 1) for i in row] for row in ids]
    # what transformers' image processor gives: the used tiles (an empty slot: the first)
    mask = torch.tensor([[[t < n for t in range(TILES)] for n in row] for row in tiles]).long()
    spans = [processing.get_cross_attention_token_mask(row, IMG) for row in rows]
    cross = processing.convert_sparse_cross_attention_mask_to_dense(
        spans, tiles, TILES, tokens.shape[1]
    )
    hf_inputs = dict(
        input_ids=tokens,
        pixel_values=pixels,
        aspect_ratio_ids=ids_t,
        aspect_ratio_mask=mask,
        cross_attention_mask=torch.tensor(cross),
    )
    return tokens, Images(pixels, ids_t, mask), hf_inputs


def _takes_layer_outputs() -> bool:
    """Whether the installed transformers' vision encoder reports layer i's output as
    hidden_states[i] (5.x) rather than its input (Meta's reading, transformers 4.x)."""
    config = transformers.MllamaVisionConfig(
        hidden_size=8, attention_heads=1, intermediate_size=8, num_hidden_layers=1
    )
    encoder = modeling.MllamaVisionEncoder(config, num_layers=1)
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        return not torch.equal(encoder(x).hidden_states[0], x)


@contextlib.contextmanager
def _meta_features(hf_model):
    """transformers' encoder reports each layer's input as hidden_states[i] (module doc, 2)."""

    def inputs(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        return type(output)(
            last_hidden_state=output.last_hidden_state,
            hidden_states=(x, *output.hidden_states[:-1]),
        )

    handle = None
    if _takes_layer_outputs():
        encoder = hf_model.model.vision_model.transformer
        handle = encoder.register_forward_hook(inputs, with_kwargs=True)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@contextlib.contextmanager
def _meta_rows(hf_model, cross_attention_mask):
    """transformers' cross-attention output zeroed on rows that see no image (module doc, 1)."""
    seeing = cross_attention_mask.flatten(2).any(dim=-1).unsqueeze(-1).float()  # [B, T, 1]

    def zero(module, args, output):
        return (output[0] * seeing, *output[1:])

    layers = [m for m in hf_model.modules() if isinstance(m, modeling.MllamaTextCrossAttention)]
    handles = [layer.register_forward_hook(zero) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _max_error(hf_model, model, tokens, images, hf_inputs, meta_rows=False) -> float:
    with torch.no_grad(), _meta_features(hf_model), contextlib.ExitStack() as stack:
        if meta_rows:
            stack.enter_context(_meta_rows(hf_model, hf_inputs["cross_attention_mask"]))
        expected = hf_model(**hf_inputs).logits
        return (model(tokens, images=images) - expected).abs().max().item()


def test_one_image(models):
    hf_model, model, _ = models
    tokens, images, hf_inputs = _inputs([[IMG, 5, 6, 7, 8, 9]], [[2]])
    assert _max_error(hf_model, model, tokens, images, hf_inputs) < 1e-4


def test_two_images(models):
    """Two images a row, in a 2x1 and a 1x2 layout and a single tile; in row 1 a run of two
    image tokens, whose images are both seen from the second on."""
    hf_model, model, _ = models
    rows = [[IMG, 5, 6, IMG, 7, 8, 9], [IMG, IMG, 10, 11, 12, 13, 14]]
    tokens, images, hf_inputs = _inputs(rows, [[3, 1], [2, 1]])
    assert _max_error(hf_model, model, tokens, images, hf_inputs) < 1e-4


def test_text_before_the_first_image(models):
    """Where Meta and transformers differ (#39379). herd's rows before the first image are the
    text model's; transformers' are not (its images leak into them); with transformers'
    attention branch zeroed there, as Meta does, every row agrees."""
    hf_model, model, _ = models
    rows = [[3, 4, 5, IMG, 6, 7, 8], [9, IMG, 10, 11, IMG, 12, 13]]
    tokens, images, hf_inputs = _inputs(rows, [[2, 0], [3, 1]])
    assert _max_error(hf_model, model, tokens, images, hf_inputs, meta_rows=True) < 1e-4
    with torch.no_grad(), _meta_features(hf_model):
        ours = model(tokens, images=images)
        theirs = hf_model(**hf_inputs).logits
        for row, first in ((0, 3), (1, 1)):
            text = tokens[row : row + 1, :first]
            alone = model(text)[0]
            assert (ours[row, :first] - alone).abs().max().item() < 1e-6
            leak = (theirs[row, :first] - hf_model(input_ids=text).logits[0]).abs().max().item()
            assert leak > 1e-3, "transformers no longer leaks images into earlier text (#39379)?"


def test_text_only(models):
    hf_model, model, _ = models
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        assert (model(tokens) - hf_model(input_ids=tokens).logits).abs().max().item() < 1e-4


def test_image_mask_is_the_processors():
    """herd's mask from token ids equals transformers' processor's, tile by tile."""
    cases = [
        [1, IMG, 2, 3],
        [IMG, 1, IMG, 2],
        [IMG, IMG, 1, 2, IMG, 3],
        [1, 2, IMG, IMG],
        [IMG, 1, IMG, IMG, 2, 3],
    ]
    config = herd.ModelConfig.from_dict(
        {
            **dict(dim=8, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=VOCAB, ffn_dim=8),
            "vision": dict(
                dim=8, n_layers=1, n_global_layers=0, n_heads=1, ffn_dim=8, image_size=28,
                patch_size=14, max_tiles=TILES, aspect_ratios=[[1, 1], [1, 2]], feature_layers=[0],
                cross_attention_layers=[1],
            ),
        }
    )  # fmt: skip
    for row in cases:
        n = row.count(IMG)
        ids = [[2 if i % 2 == 0 else 1 for i in range(n)]]
        tokens, images, hf_inputs = _inputs([row], ids)
        images = prepare_images(images, tokens, config)
        ours = image_visibility(tokens, IMG, n).unsqueeze(-1) & images.aspect_ratio_mask[:, None]
        assert torch.equal(ours.long(), hf_inputs["cross_attention_mask"]), row


def test_vision_features_are_the_inputs_of_their_layers(models):
    """herd's features are the inputs of `feature_layers` (Meta's `return_intermediate`)."""
    _, model, _ = models
    seen = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        for layer in model.vision.layers
    ]
    projected = []
    hooks.append(
        model.vision.projector.register_forward_hook(lambda m, a, o: projected.append(a[0]))
    )
    tokens, images, _ = _inputs([[IMG, 5]], [[2]])
    with torch.no_grad():
        model(tokens, images=images)
    for h in hooks:
        h.remove()
    features = projected[0][..., 16:].unflatten(-1, (16, 2))  # [..., dim, feature layer]
    for f, layer in enumerate(model.config.vision.feature_layers):
        expected = seen[layer].view(1, TILES, -1, 16)[:, :, : features.shape[2]]
        assert torch.equal(features[..., f], expected)


def test_converted_back_loads_in_transformers(models):
    hf_model, _, folder = models
    assert main(["convert", str(folder / "herd"), str(folder / "back"), "--to", "hf"]) == 0
    back = transformers.MllamaForConditionalGeneration.from_pretrained(folder / "back").eval()
    rows = [[IMG, 5, 6, IMG, 7, 8], [1, IMG, 2, 3, 4, 5]]
    _, _, hf_inputs = _inputs(rows, [[2, 3], [1, 0]])
    with torch.no_grad():
        expected = hf_model(**hf_inputs).logits
        assert (back(**hf_inputs).logits - expected).abs().max().item() < 1e-4
