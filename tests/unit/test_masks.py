"""Packed-sequence attention: document masking, per-document positions, bidirectional regions."""

from __future__ import annotations

import re
from pathlib import Path

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


def _memory_kib() -> tuple[int, int]:
    """(peak, current) resident memory of this process, KiB (Linux /proc)."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmHWM", "VmRSS"))


def test_compiled_flex_attention_matches_the_dense_mask_in_little_memory():
    """The block-mask path (compiled FlexAttention, the mask built once per batch by the compiled
    builder) gives the dense-mask path's losses, and at T = 8192 it needs a small share of the
    memory of one head's T x T score matrix (256 MiB in float32). Forward only: torch has no
    FlexAttention backward on CPU."""
    T = 8192
    config = CONFIG.replace(n_layers=1, max_seq_len=T)
    model = herd.build_model(config, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (2, T), generator=gen)
    targets = torch.randint(0, 64, (2, T), generator=gen)
    # Documents that end inside 128-token blocks and span several, a prefix that attends both
    # ways inside the second document, and a row that is one long document.
    doc = torch.tensor([[0] * 100 + [1] * 5000 + [2] * (T - 5100), [0] * T])
    bidirectional = torch.zeros(2, T, dtype=torch.bool)
    bidirectional[0, 100:700] = True
    bidirectional[1, :50] = True
    packed = PackedAttention(doc, bidirectional)
    with torch.no_grad():
        flex = packed.with_block_mask()
        model(tokens, packed=flex, targets=targets, reduction="none")  # compiles
        Path("/proc/self/clear_refs").write_text("5")  # restart the peak from here
        _, before = _memory_kib()
        fast = model(tokens, packed=flex, targets=targets, reduction="none")
        peak, _ = _memory_kib()
        dense = model(tokens, packed=packed, targets=targets, reduction="none")
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-5)
    # 2 rows x 4 heads of such matrices: 2 GiB for an attention that builds them
    score_matrix_kib = T * T * 4 // 1024
    assert peak - before < score_matrix_kib / 4, (peak - before, score_matrix_kib)
