"""herd/model/lora.py: the adapted forward, frozen base, disabling, merging and PEFT's files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import herd
from herd.errors import HerdError
from herd.model.families import build_model
from herd.model.linear import Linear
from herd.model.lora import (
    LoraConfig,
    LoraLinear,
    adapter_state_dict,
    adapters_disabled,
    apply_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    read_adapter_config,
    save_adapter,
)
from herd.model.transformer import Transformer

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, ffn_dim=48, max_seq_len=32
)
ALL = LoraConfig(r=4, alpha=8.0, target_modules="all-linear")


def _tokens():
    return torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))


def _randomise_adapters(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.1)


@torch.no_grad()
def test_zero_b_gives_the_base_logits_and_a_is_kaiming_uniform():
    model = build_model(CONFIG).eval()
    tokens = _tokens()
    base = model(tokens)
    apply_lora(model, ALL)
    assert torch.equal(model(tokens), base)
    layers = lora_layers(model)
    assert len(layers) == CONFIG.n_layers * 7
    for m in layers.values():
        assert torch.count_nonzero(m.lora_B) == 0
        bound = 1 / m.in_features**0.5  # kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))
        assert m.lora_A.abs().max() <= bound and m.lora_A.abs().max() > bound / 2


def test_targets_accept_peft_and_herd_names_and_refuse_others():
    assert LoraConfig(target_modules=("wq", "v_proj")).targets == ("q_proj", "v_proj")
    assert LoraConfig(target_modules=["w1", "w2", "w3"]).targets == (
        "down_proj",
        "gate_proj",
        "up_proj",
    )
    model = apply_lora(build_model(CONFIG), LoraConfig(target_modules=("q_proj", "w2")))
    assert sorted(lora_layers(model)) == [
        "layers.0.attn.wq",
        "layers.0.ffn.w2",
        "layers.1.attn.wq",
        "layers.1.ffn.w2",
    ]
    for bad in ("lm_head", "output", "qproj"):
        with pytest.raises(HerdError, match="unknown LoRA target"):
            LoraConfig(target_modules=(bad,))
    with pytest.raises(HerdError, match="rank"):
        LoraConfig(r=0)
    with pytest.raises(HerdError, match="already has"):
        apply_lora(model, ALL)


def test_only_adapters_require_and_get_gradients():
    model = apply_lora(build_model(CONFIG), ALL)
    _randomise_adapters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{path}.{w}" for path in lora_layers(model) for w in ("lora_A", "lora_B")}
    tokens = _tokens()
    loss = model(tokens, targets=tokens, reduction="sum")
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_adapted_layer_computes_the_lora_formula():
    torch.manual_seed(0)
    base = Linear(16, 24)
    layer = LoraLinear(base, LoraConfig(r=3, alpha=6.0))
    assert layer.weight is base.weight  # the same Parameter: no copy of the base
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 16)
    expected = x @ base.weight.T + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)


@torch.no_grad()
def test_adapters_disabled_gives_the_base_logits_and_restores():
    model = build_model(CONFIG).eval()
    tokens = _tokens()
    base = model(tokens)
    apply_lora(model, ALL)
    _randomise_adapters(model)
    adapted = model(tokens)
    assert not torch.allclose(adapted, base)
    with adapters_disabled(model):
        assert torch.equal(model(tokens), base)
    assert torch.equal(model(tokens), adapted)
    with pytest.raises(RuntimeError), adapters_disabled(model):
        raise RuntimeError  # restored on the way out of an exception too
    assert torch.equal(model(tokens), adapted)


@torch.no_grad()
def test_merge_gives_base_plus_scaled_ba_and_the_adapted_logits():
    model = build_model(CONFIG).eval()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(r=4, alpha=12.0, target_modules=("q_proj", "k_proj", "w2")))
    _randomise_adapters(model)
    tokens = _tokens()
    adapted = model(tokens)
    merged = merge_lora(model)
    assert set(merged) == set(base_state)
    for name, w in merged.items():
        path = name.removesuffix(".weight")
        m = lora_layers(model).get(path)
        expected = base_state[name] if m is None else base_state[name] + 3.0 * (m.lora_B @ m.lora_A)
        assert torch.equal(w, expected), name
    plain = Transformer(CONFIG)
    plain.load_state_dict(merged, strict=False)
    plain.init_buffers()
    torch.testing.assert_close(plain.eval()(tokens), adapted, atol=1e-5, rtol=1e-5)


def test_save_and_load_adapter_round_trip(tmp_path):
    model = apply_lora(build_model(CONFIG), LoraConfig(r=2, alpha=4.0, dropout=0.1))
    _randomise_adapters(model)
    out = save_adapter(model, tmp_path / "adapter", base_path=tmp_path)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4.0 and cfg["lora_dropout"] == 0.1
    assert cfg["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["base_model_name_or_path"] == str(tmp_path.resolve())
    keys = set(adapter_state_dict(model))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 2 * CONFIG.n_layers

    other = load_adapter(build_model(CONFIG, seed=0), out)
    for path, m in lora_layers(model).items():
        o = lora_layers(other)[path]
        assert torch.equal(o.lora_A, m.lora_A) and torch.equal(o.lora_B, m.lora_B)
    assert other.lora_config.dropout == 0.1
    with pytest.raises(HerdError, match="already exists"):
        save_adapter(model, out, base_path=None)


def test_load_adapter_errors(tmp_path):
    model = apply_lora(build_model(CONFIG), LoraConfig(r=2))
    out = save_adapter(model, tmp_path / "a", base_path=None)
    with pytest.raises(HerdError, match=r"no adapter_config\.json"):
        read_adapter_config(tmp_path)
    with pytest.raises(HerdError, match="no such adapter folder"):
        read_adapter_config(tmp_path / "missing")
    wider = dataclasses.replace(CONFIG, dim=64)
    with pytest.raises(HerdError, match="has shape"):
        load_adapter(build_model(wider), out)
    deeper = dataclasses.replace(CONFIG, n_layers=3)
    with pytest.raises(HerdError, match="missing tensor"):
        load_adapter(build_model(deeper), out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    for change, match in (
        ({"use_dora": True}, "use_dora"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"target_modules": ".*proj"}, "pattern"),
        ({"r": "two"}, "rank"),
    ):
        (out / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(HerdError, match=match):
            read_adapter_config(out)
    (out / "adapter_config.json").write_text("{")
    with pytest.raises(HerdError, match="not valid JSON"):
        read_adapter_config(out)


def test_a_vision_model_gets_adapters_on_its_text_blocks_and_saves_its_added_parts(tmp_path):
    """The encoder and cross-attention layers have projections of the same names: LoRA leaves
    them to modules_to_save (trained whole, saved whole under herd's names) or frozen."""
    from herd.model.families import build_model as build_any
    from herd.model.multimodal import ADDED_PARTS
    from tests.unit.test_generate_image import VISION

    config = dataclasses.replace(CONFIG, vision=VISION)
    model = apply_lora(build_any(config), dataclasses.replace(ALL, modules_to_save=ADDED_PARTS))
    assert sorted({p.split(".")[0] for p in lora_layers(model)}) == ["layers"]
    assert len(lora_layers(model)) == 7 * CONFIG.n_layers
    for name, p in model.named_parameters():
        expected = ".lora_" in name or name.startswith(tuple(f"{m}." for m in ADDED_PARTS))
        assert p.requires_grad == expected, name
    _randomise_adapters(model)
    out = save_adapter(model, tmp_path / "vision", base_path=None)
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == list(
        ADDED_PARTS
    )
    other = load_adapter(build_any(config, seed=5), out)
    saved, loaded = adapter_state_dict(model), adapter_state_dict(other)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert "base_model.model.vision.patch_embed.weight" in saved
    # a text model has no such parts: one line, nothing loaded
    with pytest.raises(HerdError, match="modules_to_save vision, cross_layers, extra_embed"):
        load_adapter(build_model(CONFIG), out)
    plain = apply_lora(build_any(config), ALL)  # no modules_to_save: the added parts freeze
    assert not any(p.requires_grad for n, p in plain.named_parameters() if ".lora_" not in n)
