"""Cross-entropy fused with the output projection, computed in row chunks.

The output projection is the widest layer of a Llama model (dim x 128,256 for Llama 3), and the
plain path materialises float32 logits for every token of the batch, then a log-softmax of the same
size, then its gradient: for Llama 3 at 4 x 2,048 tokens that is 4 GiB per copy. Here the logits of a
few hundred rows at a time are computed, turned into the loss and into the gradient of the loss
with respect to those logits (softmax minus one-hot), and immediately contracted into the gradients
of the hidden states and of the projection weight, so no [tokens, vocab] tensor outlives its chunk.
The gradients are thus computed during the forward pass and only scaled in the backward pass (the
approach of Liger Kernel's fused linear cross-entropy, Hsu et al. 2024), which is exact because the
loss is a sum: d(g * sum)/dx = g * d(sum)/dx.

On CPU this also avoids streaming three logit-sized tensors through memory, which is where a large
part of a small model's step time goes (bench/train.py).
"""

from __future__ import annotations

import threading

import torch
from torch.autograd.function import once_differentiable

IGNORE = -100


def _chunk_rows(rows: int, vocab_size: int, device: torch.device) -> int:
    """Rows per chunk: at most ~128 MiB of float32 logits on CPU, ~1 GiB on accelerators, split
    evenly (no small tail chunk).

    On CPU the [rows, dim] x [dim, vocab] product of a small model runs at 115 GFLOP/s with 262
    rows and 165-185 with 512-2,048 (2 Zen 4 cores, vocabulary 32,000): a short chunk cannot
    amortise the packing of the whole weight. Measured over the whole fused loss, forward and
    backward (2,048 rows, 2 threads): 512 rows 592-618 ms, 683 rows 576-582, 1,024 rows 566-591,
    2,048 rows 558-570; past 512 rows the size hardly matters, so the smaller buffer wins. Llama
    3's vocabulary gets ~260 rows per chunk within the same budget.
    """
    budget = (128 << 20) if device.type == "cpu" else (1 << 30)
    most = max(64, budget // (4 * vocab_size))
    chunks = -(-rows // most)
    return -(-rows // chunks)


# Below this a float32 probability has lost relative precision (subnormal at 2**-126), so the
# loss of such a row is not taken as -log p but recomputed from its logits.
_TINY_PROB = 2.0**-100


class _Workspace(threading.local):
    """One CPU logits buffer per thread, kept between training steps.

    A fresh 128 MiB buffer per step is a fresh mmap whose every page faults on first write: about
    25 ms of a 1.3 s step on 2 cores (bench/train.py). CUDA's caching allocator makes this moot.
    """

    buffer: torch.Tensor | None = None

    def get(self, rows: int, cols: int) -> torch.Tensor:
        if self.buffer is None or self.buffer.numel() < rows * cols:
            self.buffer = None  # free the old one before allocating the new
            self.buffer = torch.empty(rows * cols, dtype=torch.float32, device="cpu")
        return self.buffer[: rows * cols].view(rows, cols)


_workspace = _Workspace()


def release_workspace() -> None:
    """Free this thread's cached CPU logits buffer (it is rebuilt on the next training step)."""
    _workspace.buffer = None


def _softmax_rows_(logits, safe, keep, hidden, weight):
    """Softmax probabilities of `logits` [rows, vocab] (float32), zero on rows not kept, written
    over `logits` in eager mode; returns them and each row's loss -log softmax[target] (zero where
    not kept).

    On CPU torch's softmax works row by row in cache (max, exp and sum, scale): one read and one
    write of the chunk instead of the five passes of separate amax, sub, exp, sum and multiply,
    about 25 ms less per 1,024 x 32,000 chunk. The loss is then -log of the target's probability,
    except on rows where that probability is too small to carry precision: those (rare) rows get
    logsumexp - logit from their recomputed logits. CPU's logsumexp costs more than four of the
    softmax passes, while elsewhere it is cheap and needs no host sync, so it is used directly.
    Under torch.compile the functional form is traced (Inductor fuses it; the in-place `out=` and
    the data-dependent branch below are what Dynamo and Inductor handle badly).
    """
    picked = logits.gather(1, safe[:, None]).squeeze(1)
    if torch.compiler.is_compiling():
        lse = torch.logsumexp(logits, dim=1)
        return torch.softmax(logits, dim=1) * keep[:, None], (lse - picked) * keep
    if logits.device.type != "cpu":
        return _softmax_rows_by_lse_(logits, picked, keep)
    torch.softmax(logits, dim=1, out=logits)
    if not bool(keep.all()):
        logits.mul_(keep[:, None])
    prob = logits.gather(1, safe[:, None]).squeeze(1)
    loss = -prob.log()  # rows not kept have prob 0 here: loss inf, zeroed by the mask below
    tiny = keep & (prob < _TINY_PROB)
    if bool(tiny.any()):  # target logit and logsumexp from the same recomputed product
        exact = torch.mm(hidden[tiny], weight.t()).to(logits.dtype)
        target = exact.gather(1, safe[tiny][:, None]).squeeze(1)
        loss[tiny] = torch.logsumexp(exact, dim=1) - target
    return logits, torch.where(keep, loss, 0.0)


def _softmax_rows_by_lse_(logits, picked, keep):
    """`_softmax_rows_` off CPU: logsumexp (one fused kernel), then exp(logits - lse) in place
    with documented in-place operators (softmax's out= aliasing its input is only verified on
    CPU)."""
    lse = torch.logsumexp(logits, dim=1)
    logits.sub_(lse[:, None]).exp_().mul_(keep[:, None])
    return logits, (lse - picked) * keep


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum over rows with target != -100 of -log softmax(h W^T)[target], gradients precomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        compute = torch.get_autocast_dtype(hidden.device.type)
        autocast = torch.is_autocast_enabled(hidden.device.type)
        dtype = compute if autocast else hidden.dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        grad_h = torch.empty_like(hidden)
        # Logits, loss and gradients in at least float32 (float64 stays float64: exactness
        # tests); the weight-gradient accumulator is written by the first chunk, not zero-filled.
        wide = torch.promote_types(dtype, torch.float32)
        grad_w = torch.empty(weight.shape, dtype=wide, device=weight.device)
        total = torch.zeros((), dtype=wide, device=hidden.device)
        full = dtype == wide
        rows_max = min(chunk, h.shape[0])
        if dtype != torch.float32 or torch.compiler.is_compiling():
            buffer = None
        elif h.device.type == "cpu":
            buffer = _workspace.get(rows_max, w.shape[0])
        else:
            buffer = torch.empty(rows_max, w.shape[0], device=h.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, h.shape[0], chunk):
                rows = slice(start, start + chunk)
                hc, tc = h[rows], targets[rows]
                if buffer is None:
                    logits = torch.mm(hc, w.t()).to(wide)  # a no-op in float32 and float64
                else:
                    logits = torch.mm(hc, w.t(), out=buffer[: hc.shape[0]])
                keep = tc != IGNORE
                safe = torch.where(keep, tc, 0)
                # d loss / d logits = softmax - onehot(target), zero on ignored rows.
                grad, losses = _softmax_rows_(logits, safe, keep, hc, w)
                # out of place: under torch 2.11's Dynamo, an output accumulated in place into a
                # fresh zeros tensor lost its gradient (backward returned zeros)
                total = total + losses.sum()
                grad.scatter_add_(1, safe[:, None], -keep[:, None].to(grad.dtype))
                if full:
                    torch.mm(grad, w, out=grad_h[rows])
                    if start == 0:
                        torch.mm(grad.t(), hc, out=grad_w)
                    else:
                        grad_w.addmm_(grad.t(), hc)
                else:  # low-precision contractions, float32 accumulation across chunks
                    grad = grad.to(dtype)
                    grad_h[rows] = (grad @ w).to(hidden.dtype)
                    part = (grad.t() @ hc).to(wide)
                    if start == 0:
                        grad_w.copy_(part)
                    else:
                        grad_w += part
        grad_w = grad_w.to(weight.dtype)
        if torch.compiler.is_compiling():
            ctx.save_for_backward(grad_h, grad_w)
            ctx.owned = None
        else:
            # Held as attributes, not saved tensors, so that backward can give them away: scaled
            # in place and returned with no other reference, the weight's gradient is moved into
            # .grad instead of copied (a fresh 32 MB tensor and its page faults per step at a
            # 32,000-token vocabulary, ~20 ms of bench/train.py's step on 1 thread).
            ctx.owned = [grad_h, grad_w]
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # The gradients are constants here, so a gradient of them would silently lack the
        # second-order terms: refuse create_graph (the engine enables grad mode only for it).
        if ctx.owned is not None and torch.is_grad_enabled():
            raise RuntimeError(
                "linear_cross_entropy: double backward (create_graph=True) is not supported"
            )
        return _LinearCrossEntropySum._scaled(ctx, grad_total)

    @staticmethod
    @once_differentiable
    def _scaled(ctx, grad_total):
        if ctx.owned is None:
            grad_h, grad_w = ctx.saved_tensors
            return grad_h * grad_total, grad_w * grad_total, None, None
        if not ctx.owned:
            raise RuntimeError(
                "linear_cross_entropy: backward ran twice through the same fused loss; its "
                "gradients are handed over on the first (retain_graph is not supported)"
            )
        grad_h, grad_w = ctx.owned
        ctx.owned.clear()
        return grad_h.mul_(grad_total), grad_w.mul_(grad_total), None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "sum",
    chunk: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `targets` (-100 = ignored), chunked.

    hidden [..., dim], weight [vocab, dim], targets [...]. `reduction="sum"` returns the float32
    sum over counted targets, differentiable with the fused gradients above; `"none"` returns the
    per-target loss (0 where ignored) with ordinary autograd per chunk (evaluation, scoring).
    """
    dim = hidden.shape[-1]
    flat_h, flat_t = hidden.reshape(-1, dim), targets.reshape(-1)
    chunk = chunk or _chunk_rows(flat_h.shape[0], weight.shape[0], hidden.device)
    if reduction == "sum":
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropySum.apply(flat_h, weight, flat_t, chunk)
        return linear_cross_entropy(hidden, weight, targets, "none", chunk).sum()
    if reduction != "none":
        raise ValueError(f"reduction {reduction!r}: expected 'sum' or 'none'")
    out = []
    for start in range(0, flat_h.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits = torch.nn.functional.linear(flat_h[rows], weight)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        out.append(
            torch.nn.functional.cross_entropy(
                logits, flat_t[rows], ignore_index=IGNORE, reduction="none"
            )
        )
    return torch.cat(out).view(targets.shape)
