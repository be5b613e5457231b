"""Every preset's parameter count equals the released checkpoint's (published counts)."""

from __future__ import annotations

import pytest

import herd

# Counts of the released checkpoints (sum of all tensors, tied embeddings counted once).
PUBLISHED = {
    "llama-7b": 6_738_415_616,
    "llama-13b": 13_015_864_320,
    "llama-33b": 32_528_943_616,
    "llama-65b": 65_285_660_672,
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "llama3-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count(name):
    assert herd.preset(name).num_params() == PUBLISHED[name]


def test_architecture_details():
    c = herd.preset("llama3-405b")
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.ffn_dim) == (126, 16384, 128, 8, 53248)
    assert c.rope_theta == 500000.0 and c.rope_scaling.factor == 8.0
    assert herd.preset("llama3.2-1b").tie_embeddings
    assert herd.preset("llama3.2-1b").rope_scaling.factor == 32.0
    assert herd.preset("llama2-70b").n_kv_heads == 8
    assert herd.preset("llama-7b").n_kv_heads == 32 and herd.preset("llama-7b").norm_eps == 1e-6
    assert herd.preset("demo").num_params() == 15_191_712  # llama2.c stories15M


def test_unknown_preset():
    with pytest.raises(herd.HerdError, match="unknown preset 'llama5'"):
        herd.preset("llama5")
