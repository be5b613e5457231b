"""The PPO value model (herd/posttrain/ppo_value.py) and the trunk it reads,
`Transformer.forward(hidden=True)`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from herd.model.config import ModelConfig
from herd.model.families import build_model
from herd.model.masks import PackedAttention
from herd.posttrain.ppo_value import ValueModel

CONFIG = ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, ffn_dim=64, max_seq_len=32
)


@pytest.fixture
def tokens():
    return torch.randint(0, CONFIG.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))


def test_hidden_states_are_what_the_output_layer_reads(tokens):
    model = build_model(CONFIG, seed=0)
    with torch.no_grad():
        hidden = model(tokens, hidden=True)
        assert hidden.shape == (3, 10, CONFIG.dim)
        torch.testing.assert_close(model.output(hidden), model(tokens), rtol=0, atol=0)
        last = torch.tensor([9, 0, 4])
        torch.testing.assert_close(model(tokens, last=last, hidden=True), hidden[[0, 1, 2], last])


def test_value_model_reads_the_head_on_the_trunk(tokens):
    trunk = build_model(CONFIG, seed=0)
    head = nn.Linear(CONFIG.dim, 1, bias=False)
    nn.init.normal_(head.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    model = ValueModel(trunk, head)
    values = model(tokens)
    assert values.shape == (3, 10) and values.dtype == torch.float32
    with torch.no_grad():
        direct = (trunk(tokens, hidden=True) @ head.weight.t()).squeeze(-1)
    torch.testing.assert_close(values, direct)
    torch.testing.assert_close(
        model(tokens, last=torch.tensor([2, 5, 9])), values[[0, 1, 2], [2, 5, 9]]
    )
    # Packed rows: values of a document do not depend on what was packed before it.
    doc_ids = torch.tensor([[0] * 4 + [1] * 6] * 3)
    packed = model(tokens, packed=PackedAttention.of(doc_ids))
    torch.testing.assert_close(packed[:, 4:], model(tokens[:, 4:]), atol=1e-5, rtol=1e-5)

    values.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert trunk.layers[0].attn.wq.weight.grad.abs().sum() > 0
    assert trunk.output.weight.grad is None  # the LM head is not part of the value model's graph


def test_value_model_starts_at_zero_without_a_head(tokens):
    model = ValueModel(build_model(CONFIG, seed=0))
    assert torch.equal(model(tokens), torch.zeros(3, 10))


def test_value_head_shape_is_checked():
    with pytest.raises(ValueError, match="32 -> 1"):
        ValueModel(build_model(CONFIG, seed=0), nn.Linear(16, 1))
