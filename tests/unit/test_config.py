"""ModelConfig validation: unknown keys, missing keys, impossible shapes, with the source named."""

from __future__ import annotations

import pytest

import herd
from herd import HerdError, ModelConfig
from herd.model.config import llama_ffn_dim

GOOD = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, ffn_dim=128)


def test_roundtrip():
    cfg = ModelConfig.from_dict({**GOOD, "rope_scaling": {"factor": 8.0}})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.head_dim == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_layer": 2}, "unknown key 'n_layer'"),
        ({"rope_scaling": {"factr": 2}}, "unknown key 'rope_scaling.factr'"),
        ({"dim": 63}, "dim 63 is not divisible by n_heads 4"),
        ({"n_kv_heads": 3}, "not a multiple of n_kv_heads 3"),
        ({"ffn_dim": 0}, "'ffn_dim' is 0, expected a positive integer"),
        ({"dim": 12, "n_heads": 4}, "head_dim 3 must be even"),
        ({"dim": 64.5}, "'dim' is 64.5, expected integer"),
    ],
)
def test_rejections_name_the_field(change, message):
    with pytest.raises(HerdError, match=message) as err:
        ModelConfig.from_dict({**GOOD, **change}, source="my.json")
    assert str(err.value).startswith("my.json")


def test_missing_key():
    data = dict(GOOD)
    del data["vocab_size"]
    with pytest.raises(HerdError, match="missing key 'vocab_size'"):
        ModelConfig.from_dict(data)


def test_llama_ffn_dim_matches_released_models():
    assert llama_ffn_dim(4096, 256) == 11008  # LLaMA 7B
    assert llama_ffn_dim(4096, 1024, 1.3) == 14336  # Llama 3 8B
    assert llama_ffn_dim(8192, 4096, 1.3) == 28672  # Llama 2/3 70B


def test_example_configs_parse():
    from pathlib import Path

    from herd.train.config import load_run_config

    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        run = load_run_config(str(path))
        if run.init_checkpoint:  # fine-tuning configs name a checkpoint the user brings
            assert "preset" not in run.model
        else:
            run.model_config(vocab_size=1000).validate()


@pytest.mark.parametrize("name", ["demo", "llama2-70b", "llama3-8b", "llama3.2-1b"])
def test_counted_parameters_are_the_built_models(name):
    """num_params counts from the shapes; the module tree Transformer builds (on the meta device,
    no memory) has exactly that many, tied and untied, MHA and GQA."""
    import torch

    from herd.model.transformer import Transformer

    config = herd.preset(name)
    with torch.device("meta"):
        built = sum(p.numel() for p in Transformer(config).parameters())
    assert config.num_params() == built
    dense = built - (0 if config.tie_embeddings else config.vocab_size * config.dim)
    assert config.dense_params() == dense
