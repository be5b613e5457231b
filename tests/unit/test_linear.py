"""herd's Linear: its CPU float32 training path (oneDNN products, hand-written backward) equals
torch's F.linear in value and gradients, and every other case is F.linear itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from herd.model import linear
from herd.model.linear import Linear

needs_onednn = pytest.mark.skipif(not linear.ONEDNN_AVAILABLE, reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def _onednn_on(monkeypatch):
    # The oneDNN path is the default only on CPUs where it was measured faster (AVX-512); it is
    # tested wherever torch has it.
    monkeypatch.setattr(linear, "_ONEDNN", linear.ONEDNN_AVAILABLE)


def _layer_and_input(rows=96, d_in=48, d_out=80, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = Linear(d_in, d_out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=gen) / d_in**0.5)
    x = torch.randn(2, rows // 2, d_in, generator=gen, requires_grad=True)
    return layer, x


@needs_onednn
def test_training_path_matches_f_linear_with_gradients():
    layer, x = _layer_and_input()
    out = layer(x)
    assert "OneDNNLinear" in type(out.grad_fn).__name__  # the path under test was taken
    grad = torch.randn_like(out)
    out.backward(grad)
    got_x, got_w = x.grad.clone(), layer.weight.grad.clone()
    x.grad = layer.weight.grad = None
    ref = F.linear(x, layer.weight)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_x, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, layer.weight.grad, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_frozen_weight_gets_no_gradient_and_input_still_does():
    layer, x = _layer_and_input()
    layer.weight.requires_grad_(False)
    out = layer(x)
    out.sum().backward()
    assert layer.weight.grad is None
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x))


def test_other_cases_are_plain_f_linear():
    layer, x = _layer_and_input()
    with torch.no_grad():  # inference
        assert layer(x).grad_fn is None
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=0, atol=0)
    small = x[:, :8]  # 16 rows: below the measured break-even
    assert "OneDNN" not in type(layer(small).grad_fn).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides the dtype
        out = layer(x)
    assert out.dtype == torch.bfloat16
    double = Linear(48, 80).double()
    assert "OneDNN" not in type(double(x.double()).grad_fn).__name__
    assert set(layer.state_dict()) == {"weight"}  # checkpoints are those of nn.Linear


@needs_onednn
def test_torch_func_grad_and_double_backward():
    layer, x = _layer_and_input()
    w = layer.weight.detach()

    def loss(weight):
        return (linear._OneDNNLinear.apply(x.detach(), weight) ** 2).sum()

    got = torch.func.grad(loss)(w)
    ref = torch.func.grad(lambda weight: (F.linear(x.detach(), weight) ** 2).sum())(w)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)

    # Second order (gradient penalties, Hessian-vector products) through the backward's own
    # products, against F.linear's.
    def second_order(forward):
        out = forward(x)
        (grad_x,) = torch.autograd.grad((out**2).sum(), x, create_graph=True)
        return torch.autograd.grad((grad_x**2).sum(), (x, layer.weight))

    out = layer(x)
    assert "OneDNNLinear" in type(out.grad_fn).__name__
    got = second_order(layer)
    ref = second_order(lambda inputs: F.linear(inputs, layer.weight))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
