"""RoPE against transformers' implementation (frequencies, Llama 3.1 scaling, rotation)."""

from __future__ import annotations

import pytest
import torch

from herd import ModelConfig, RopeScaling
from herd.model.rope import (
    apply_rope,
    half_to_interleaved,
    interleaved_to_half,
    inverse_frequencies,
    rope_table,
)

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402


def test_llama31_scaling_matches_transformers():
    hf_config = transformers.LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    ours = inverse_frequencies(64, 500000.0, RopeScaling(32.0, 1.0, 4.0, 8192))
    torch.testing.assert_close(ours.float(), expected.float(), rtol=1e-6, atol=0)
    assert not torch.allclose(ours, inverse_frequencies(64, 500000.0, None))


def test_rotation_matches_transformers():
    config = ModelConfig(
        dim=64,
        n_layers=1,
        n_heads=4,
        n_kv_heads=4,
        vocab_size=10,
        ffn_dim=8,
        max_seq_len=32,
        rope_theta=10000.0,
    )
    table = rope_table(config)
    q = torch.randn(2, 32, 4, 16)
    cos = torch.cat([table[:, 0], table[:, 0]], dim=-1)[None]
    sin = torch.cat([table[:, 1], table[:, 1]], dim=-1)[None]
    expected, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    torch.testing.assert_close(apply_rope(q, table), expected.transpose(1, 2))


def test_layout_permutations_are_inverse():
    w = torch.randn(8 * 16, 64)
    assert torch.equal(half_to_interleaved(interleaved_to_half(w, 8), 8), w)
    # interleaved pair (0, 1) of head 0 becomes rows (0, head_dim / 2)
    moved = interleaved_to_half(w, 8)
    assert torch.equal(moved[0], w[0]) and torch.equal(moved[8], w[1])


def test_hand_written_backward_matches_transformers_autograd():
    config = ModelConfig(
        dim=64, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=10, ffn_dim=8, max_seq_len=32
    )
    table = rope_table(config)
    q = torch.randn(2, 32, 4, 16, requires_grad=True)
    upstream = torch.randn(2, 32, 4, 16)
    cos = torch.cat([table[:, 0], table[:, 0]], dim=-1)[None]
    sin = torch.cat([table[:, 1], table[:, 1]], dim=-1)[None]
    expected, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    (ref,) = torch.autograd.grad(expected.transpose(1, 2), q, upstream)
    (got,) = torch.autograd.grad(apply_rope(q, table), q, upstream)
    torch.testing.assert_close(got, ref)
    # torch.func runs through it too (the Function has setup_context)
    func_grad = torch.func.vjp(lambda x: apply_rope(x, table), q.detach())[1](upstream)[0]
    torch.testing.assert_close(func_grad, ref)


def test_backward_is_differentiable_to_second_order():
    config = ModelConfig(
        dim=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=10, ffn_dim=8, max_seq_len=8
    )
    table = rope_table(config)
    cos = torch.cat([table[:, 0], table[:, 0]], dim=-1)[None]
    sin = torch.cat([table[:, 1], table[:, 1]], dim=-1)[None]
    q = torch.randn(2, 8, 2, 16, requires_grad=True)
    weight = torch.randn(2, 8, 2, 16)

    def transformers_rope(x):
        out, _ = apply_rotary_pos_emb(x.transpose(1, 2), x.transpose(1, 2), cos, sin)
        return out.transpose(1, 2)

    def second_order(rope):  # the gradient of a gradient penalty
        (grad,) = torch.autograd.grad((rope(q) ** 3 * weight).sum(), q, create_graph=True)
        return torch.autograd.grad((grad**2).sum(), q)[0]

    got = second_order(lambda x: apply_rope(x, table))
    torch.testing.assert_close(got, second_order(transformers_rope))
