"""The chunked cross-entropy fused with the output projection equals torch's unfused
F.cross_entropy(F.linear(...)) in value and in every gradient, whatever the chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import herd
from herd.model import linear, transformer
from herd.model.config import ModelConfig
from herd.model.loss import linear_cross_entropy


def _inputs(n=30, dim=16, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, dim, generator=gen, requires_grad=True)
    w = (0.3 * torch.randn(vocab, dim, generator=gen)).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=gen)
    t[::4] = -100
    return h, w, t


@pytest.mark.parametrize("chunk", [1, 7, 30, 64])
def test_sum_and_gradients_match_unfused(chunk):
    h, w, t = _inputs()
    ref = F.cross_entropy(F.linear(h, w), t, ignore_index=-100, reduction="sum")
    (3.0 * ref).backward()
    ref_h, ref_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = linear_cross_entropy(h, w, t, chunk=chunk)
    (3.0 * got).backward()  # the upstream gradient scales the precomputed ones
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(h.grad, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, ref_w, rtol=1e-5, atol=1e-6)
    assert float(h.grad[::4].abs().sum()) == 0.0  # ignored rows get no gradient


def test_gradients_are_given_away_once():
    # backward hands its precomputed gradients over (scaled in place, moved into .grad): a
    # second pass through the same graph, or a gradient of the gradient, must fail, not be wrong
    h, w, t = _inputs()
    loss = linear_cross_entropy(h, w, t, chunk=16)
    (2.0 * loss).backward(retain_graph=True)
    first = w.grad.clone()
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    torch.testing.assert_close(w.grad, first)  # the failed pass added nothing
    h.grad = w.grad = None
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(linear_cross_entropy(h, w, t), h, create_graph=True)


def test_per_position_losses_and_all_ignored():
    h, w, t = _inputs()
    got = linear_cross_entropy(h.detach(), w.detach(), t.view(5, 6), reduction="none", chunk=4)
    ref = F.cross_entropy(F.linear(h, w), t, ignore_index=-100, reduction="none").view(5, 6)
    torch.testing.assert_close(got, ref.detach())
    none = torch.full_like(t, -100)
    loss = linear_cross_entropy(h, w, none)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(w.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, t, reduction="mean")


def test_bfloat16_autocast_close_to_autocast_reference():
    h, w, t = _inputs(n=64, dim=32, vocab=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")
        got = linear_cross_entropy(h, w, t, chunk=16)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=1e-2)
    got.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


@pytest.fixture
def onednn(monkeypatch):
    """The linear layers' oneDNN training path, wherever torch has it (by default it is taken only
    on CPUs where it was measured faster)."""
    monkeypatch.setattr(linear, "_ONEDNN", linear.ONEDNN_AVAILABLE)


def _twin_models(seed: int):
    """Two identical tiny models and a batch whose last position is not counted; 4 x 16 = 64 rows,
    enough for the linear layers' oneDNN training path."""
    config = ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=64, max_seq_len=16
    )
    a = herd.build_model(config, seed=seed)
    b = herd.build_model(config, seed=seed)
    tokens = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(seed + 1))
    targets = tokens.roll(-1, 1)
    targets[:, -1] = -100
    return a, b, tokens, targets


def test_model_loss_equals_loss_of_its_logits(onednn):
    a, b, tokens, targets = _twin_models(seed=1)
    logits = a(tokens)
    ref = F.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1), reduction="sum")
    ref.backward()
    got = b(tokens, targets=targets)
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
    per_position = b(tokens, targets=targets, reduction="none")
    assert per_position.shape == (4, 16)
    torch.testing.assert_close(per_position.sum(), ref.detach(), rtol=1e-6, atol=1e-4)


def test_target_with_vanishing_probability_keeps_an_exact_loss():
    # Row 0's target has log-probability about -240: its float32 softmax is 0, so -log p would be
    # inf; the loss must still equal the log-softmax reference (the fused loss recomputes it).
    h = torch.full((3, 4), 3.0, requires_grad=True)
    w = torch.zeros(10, 4)
    w[0], w[1] = -10.0, 10.0
    w.requires_grad_()
    t = torch.tensor([0, 1, 5])
    ref = F.cross_entropy(F.linear(h, w), t, reduction="sum")
    ref.backward()
    ref_h, ref_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = linear_cross_entropy(h, w, t, chunk=2)
    got.backward()
    assert torch.isfinite(got)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(h.grad, ref_h)
    torch.testing.assert_close(w.grad, ref_w)


@pytest.mark.parametrize("traced_loss", [False, True], ids=["cpu-graph", "accelerator-graph"])
def test_compiled_training_step_matches_eager(onednn, traced_loss, monkeypatch):
    # train.compile = true traces RoPE and the linear layers, whose eager-only fast paths (out=
    # writes into views, oneDNN) must step aside, and on CPU leaves the fused loss out of the graph.
    # Off CPU the loss is traced with the model: that graph is built here too (torch 2.11's Dynamo
    # once made its gradients zero).
    if traced_loss:
        monkeypatch.setattr(transformer, "_eager_loss", linear_cross_entropy)
    eager, compiled, tokens, targets = _twin_models(seed=3)
    ref = eager(tokens, targets=targets)
    ref.backward()
    got = torch.compile(compiled)(tokens, targets=targets)
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_accelerator_softmax_path_matches_log_softmax():
    # The path taken off CPU (logsumexp, then exp in place), run here on CPU tensors.
    from herd.model.loss import _softmax_rows_by_lse_

    gen = torch.Generator().manual_seed(5)
    logits = 4 * torch.randn(6, 50, generator=gen)
    t = torch.randint(0, 50, (6,), generator=gen)
    keep = torch.tensor([True, True, False, True, True, True])
    picked = logits.gather(1, t[:, None]).squeeze(1)
    ref_loss = F.cross_entropy(logits, t, reduction="none") * keep
    ref_probs = torch.softmax(logits, dim=1) * keep[:, None]
    probs, loss = _softmax_rows_by_lse_(logits.clone(), picked, keep)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(probs, ref_probs)


def test_compiled_loss_matches_unfused():
    # The traced form of the fused loss (what torch.compile runs off CPU), exercised on CPU.
    h, w, t = _inputs()
    ref = F.cross_entropy(F.linear(h, w), t, ignore_index=-100, reduction="sum")
    ref.backward()
    ref_h, ref_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = torch.compile(linear_cross_entropy)(h, w, t, chunk=7)
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(h.grad, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, ref_w, rtol=1e-5, atol=1e-6)
