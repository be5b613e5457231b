"""A bias-free linear layer whose CPU float32 training products run on oneDNN where it is faster.

PyTorch sends a float32 `F.linear` on CPU to MKL's sgemm. oneDNN (bundled with PyTorch, the library
its CPU inference and Inductor paths use) runs the same float32 products faster for a Llama block's
shapes on some CPUs and slower on others (one thread, 2,048 rows, GFLOP/s; weight gradients stay on
MKL everywhere, where they are at least as fast):

    product                 shape (rows x in -> out)   AVX-512 Zen 4       AVX2 EPYC
                                                       MKL    oneDNN       MKL    oneDNN
    forward  x W^T          2048 x 256 -> 704           99     106          73     62
    forward  x W^T          2048 x 704 -> 256           93     107          78     69
    input gradient  g W     2048 x 704 -> 256           96     107          78     69
    forward, input grad.    2048 x 256 -> 256            -       -          75     70

(the AVX2 figures are per call inside bench/train.py's training step, from torch.profiler; each
row there also holds the input gradients of the same shape). So oneDNN takes the forward and the
input gradient where the CPU has AVX-512, which made a whole step of a 6-layer, dim-256 model
(bench/train.py's shape) 5-7% cheaper there, and MKL keeps them on AVX2-only CPUs, where oneDNN
made the same step 1-2.5% dearer (profiled: 67 ms of 2.7 s; interleaved steps' CPU-time medians
2,417 against 2,402 ms). The choice is fixed per machine (torch's CPU capability, which the
ATEN_CPU_CAPABILITY variable can lower), never timed at run time: both are exact float32 products
whose additions run in a different order, and a run resumed on the same machine must repeat the
same arithmetic bit for bit.

The oneDNN path is taken only where it was measured to pay: CPU, float32 weights and inputs,
gradients wanted, no autocast, no compilation (Inductor makes its own choice), plain tensors (FSDP2
runs the forward on unsharded plain tensors, so it takes this path; tensor-parallel DTensors do
not) and at least 64 rows. Everything else is `F.linear`, so inference, bf16 autocast and
accelerators are unchanged. The backward is differentiable (double backward works). The
parameter is the usual `weight`: checkpoints and state dicts are those of `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MIN_ROWS = 64


def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_linear_pointwise"
        )
    except (AttributeError, RuntimeError):
        return False


# torch's CPU capabilities on which oneDNN's products were measured faster (module docstring)
_ONEDNN_FASTER_ON = {"AVX512"}

ONEDNN_AVAILABLE = _onednn_available()
_ONEDNN = ONEDNN_AVAILABLE and torch.backends.cpu.get_cpu_capability() in _ONEDNN_FASTER_ON


def _onednn_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [rows, in] @ w.T for w [out, in] (any strides), on oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    # setup_context style, so torch.func.grad can run through it too.
    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return _onednn_mm(flat, weight).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Both gradients are products again, the input's through this Function (g W is the
        # linear map of g by W^T), so the backward is differentiable to any order.
        x, weight = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _OneDNNLinear.apply(flat_grad, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(flat_grad.t(), x.reshape(-1, x.shape[-1]))
        return grad_x, grad_w


def _wants_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.is_grad_enabled()
        and (weight.requires_grad or x.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and type(weight.data) is torch.Tensor  # not a DTensor or another tensor subclass
        and x.numel() >= _MIN_ROWS * x.shape[-1]
    )


class Linear(nn.Linear):
    """`nn.Linear` without bias whose CPU float32 training path uses oneDNN (module docstring)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _wants_onednn(x, self.weight):
            return _OneDNNLinear.apply(x, self.weight)
        return F.linear(x, self.weight)
