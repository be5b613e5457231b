"""Logit parity with transformers' LlamaForCausalLM on shrunk versions of each preset family.

HF model -> `herd convert --from hf` -> herd model: same logits; herd -> `--to hf` -> transformers
loads it: same logits again. float32, max abs difference below 1e-4.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import herd  # noqa: E402
from herd.checkpoint.hf import read_hf_config  # noqa: E402
from herd.cli import main  # noqa: E402

BASE = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=256,
    max_position_embeddings=128,
)
LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)
FAMILIES = {
    "llama2-mha": dict(num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0),
    "llama3-gqa": dict(num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0),
    "llama3.1-scaling": dict(
        num_key_value_heads=2, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING
    ),
    "llama3.2-tied": dict(
        num_key_value_heads=1,
        rope_theta=500000.0,
        rope_scaling={**LLAMA3_SCALING, "factor": 32.0},
        tie_word_embeddings=True,
    ),
}


def _hf_model(overrides: dict):
    config = transformers.LlamaConfig(**BASE, **overrides)
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # non-trivial norm gains so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_roundtrip_logits(tmp_path, family):
    hf_model = _hf_model(FAMILIES[family])
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    tokens = torch.randint(0, BASE["vocab_size"], (2, 100))  # past the scaling's original context
    expected = _hf_logits(hf_model, tokens)

    assert main(["convert", str(src), str(tmp_path / "herd"), "--from", "hf"]) == 0
    model = herd.load(tmp_path / "herd")
    with torch.no_grad():
        ours = model(tokens)
    assert (ours - expected).abs().max().item() < 1e-4
    assert model.config.num_params() == sum(p.numel() for p in hf_model.parameters())

    assert main(["convert", str(tmp_path / "herd"), str(tmp_path / "back"), "--to", "hf"]) == 0
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back").float().eval()
    assert (_hf_logits(reloaded, tokens) - expected).abs().max().item() < 1e-4


def test_sharded_hf_folder(tmp_path):
    hf_model = _hf_model(FAMILIES["llama3-gqa"])
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    tokens = torch.randint(0, BASE["vocab_size"], (1, 20))
    model = herd.load(tmp_path / "hf")
    with torch.no_grad():
        assert (model(tokens) - _hf_logits(hf_model, tokens)).abs().max().item() < 1e-4


def test_transformers4_config_spelling(tmp_path):
    """transformers 4.x wrote rope_theta/rope_scaling at the top level and torch_dtype."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = read_hf_config(tmp_path)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == herd.RopeScaling(8.0, 1.0, 4.0, 8192)
    assert cfg.n_kv_heads == 2 and cfg.max_seq_len == 131072
    # and transformers 5 reads what herd writes
    model = herd.build_model(cfg.replace(max_seq_len=256))
    herd.checkpoint.hf.write_hf_folder(model.config, model.state_dict(), tmp_path / "out")
    hf_cfg = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert hf_cfg.rope_parameters["rope_type"] == "llama3"
    assert hf_cfg.rope_parameters["rope_theta"] == 500000.0
