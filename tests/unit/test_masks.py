"""Packed-sequence attention: document masking, per-document positions, bidirectional regions."""

from __future__ import annotations

import torch

import herd
from herd.model.masks import PackedAttention

CONFIG = herd.ModelConfig(
    dim=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=64,
    ffn_dim=64,
    max_seq_len=64,
    rope_theta=500000.0,
)


def test_positions_restart_per_document():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert PackedAttention(doc).positions().tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_dense_mask_small_cases():
    doc = torch.tensor([[0, 0, 1, 1, 1]])
    m = PackedAttention(doc).dense()[0, 0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    # prefix-LM: the first two tokens of document 1 see each other both ways
    bidir = torch.tensor([[False, False, True, True, False]])
    m = PackedAttention(doc, bidir).dense()[0, 0].int().tolist()
    assert m[2] == [0, 0, 1, 1, 0] and m[3] == [0, 0, 1, 1, 0] and m[4] == [0, 0, 1, 1, 1]
    assert m[0] == [1, 0, 0, 0, 0]


def test_document_b_logits_do_not_depend_on_document_a():
    model = herd.build_model(CONFIG, seed=0).eval()
    a = torch.randint(0, 64, (1, 9))
    b = torch.randint(0, 64, (1, 7))
    packed = torch.cat([a, b], dim=1)
    doc = torch.tensor([[0] * 9 + [1] * 7])
    with torch.no_grad():
        alone = model(b)
        in_pack = model(packed, packed=PackedAttention(doc))[:, 9:]
        causal_pack = model(packed)[:, 9:]  # without document masking, A leaks into B
    torch.testing.assert_close(in_pack, alone, rtol=0, atol=1e-6)
    assert (causal_pack - alone).abs().max() > 1e-3


def test_bidirectional_prefix_sees_the_future():
    model = herd.build_model(CONFIG, seed=0).eval()
    x = torch.randint(0, 64, (1, 8))
    y = x.clone()
    y[0, 3] = (x[0, 3] + 1) % 64  # change a token inside the prefix
    doc = torch.zeros(1, 8, dtype=torch.long)
    bidir = torch.tensor([[True] * 4 + [False] * 4])
    with torch.no_grad():
        fx = model(x, packed=PackedAttention(doc, bidir))
        fy = model(y, packed=PackedAttention(doc, bidir))
        cx, cy = model(x), model(y)
    assert (fx[0, 0] - fy[0, 0]).abs().max() > 1e-4  # position 0 sees position 3 in the prefix
    torch.testing.assert_close(cx[0, :3], cy[0, :3])  # causal: it does not


def test_flex_attention_block_mask_matches_the_dense_mask():
    # CUDA runs FlexAttention with `block_mask` (fully masked blocks skipped) where the CPU runs
    # SDPA with `dense`: both must attend the same keys. FlexAttention also runs on CPU.
    import warnings

    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention

    B, H, T, D = 2, 2, 256, 16  # blocks of 128: whole blocks masked and partial ones
    doc = torch.tensor([[0] * 100 + [1] * 60 + [2] * 96, [0] * 30 + [1] * 226])
    bidirectional = torch.zeros(B, T, dtype=torch.bool)
    bidirectional[0, 100:130] = True  # a prefix inside the second document
    bidirectional[1, :10] = True
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    for bidir in (None, bidirectional):
        packed = PackedAttention(doc, bidir)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=packed.dense())
        with warnings.catch_warnings():  # eager FlexAttention warns that it is unfused
            warnings.simplefilter("ignore")
            got = flex_attention(q, k, v, block_mask=packed.block_mask(H))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
