"""Writers for llama2.c model files, written from the format description, for reader tests.

Kept separate from herd's reader so a test checks the reader against an independent encoding of the
format: the header layouts (legacy, v1 "ak42" fp32, v2 Q8_0), tensor order and the interleaved RoPE
layout llama2.c uses.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

MAGIC = 0x616B3432


def random_llama2c_weights(
    dim=32, hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=48, seed=0, shared=True
):
    """Tensors in llama2.c's own (Meta) naming and layout."""
    g = torch.Generator().manual_seed(seed)
    head = dim // n_heads
    kv = n_kv_heads * head

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    w = {
        "embed": r(vocab, dim),
        "attn_norm": 1 + r(n_layers, dim),
        "wq": r(n_layers, dim, dim),
        "wk": r(n_layers, kv, dim),
        "wv": r(n_layers, kv, dim),
        "wo": r(n_layers, dim, dim),
        "ffn_norm": 1 + r(n_layers, dim),
        "w1": r(n_layers, hidden, dim),
        "w2": r(n_layers, dim, hidden),
        "w3": r(n_layers, hidden, dim),
        "norm": 1 + r(dim),
    }
    if not shared:
        w["output"] = r(vocab, dim)
    return w, (dim, hidden, n_layers, n_heads, n_kv_heads, vocab)


def _f32(f, t):
    f.write(t.contiguous().numpy().astype("<f4").tobytes())


def write_llama2c(path: Path, w: dict, params: tuple, version: int, seq_len=64, group=16) -> None:
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab = params
    shared = "output" not in w
    with open(path, "wb") as f:
        if version == 0:
            f.write(
                struct.pack(
                    "<7i",
                    dim,
                    hidden,
                    n_layers,
                    n_heads,
                    n_kv_heads,
                    vocab if shared else -vocab,
                    seq_len,
                )
            )
            for k in (
                "embed",
                "attn_norm",
                "wq",
                "wk",
                "wv",
                "wo",
                "ffn_norm",
                "w1",
                "w2",
                "w3",
                "norm",
            ):
                _f32(f, w[k])
            head = dim // n_heads
            freqs = 1.0 / 10000 ** (torch.arange(0, head, 2).float() / head)
            angles = torch.outer(torch.arange(seq_len).float(), freqs)
            _f32(f, angles.cos())
            _f32(f, angles.sin())
            if not shared:
                _f32(f, w["output"])
            return
        f.write(struct.pack("<Ii", MAGIC, version))
        f.write(struct.pack("<7i", dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len))
        f.write(struct.pack("<B", int(shared)))
        if version == 2:
            f.write(struct.pack("<i", group))
        f.write(b"\0" * (256 - f.tell()))
        for k in ("attn_norm", "ffn_norm", "norm"):
            _f32(f, w[k])
        mats = ["embed", "wq", "wk", "wv", "wo", "w1", "w2", "w3"] + ([] if shared else ["output"])
        if version == 1:
            for k in mats:
                _f32(f, w[k])
            return
        scales = []
        for k in mats:
            groups = w[k].reshape(-1, group)
            scale = groups.abs().amax(dim=1) / 127.0
            q = torch.round(groups / scale[:, None]).to(torch.int8)
            f.write(q.numpy().tobytes())
            scales.append(scale)
            w[k] = (q.float() * scale[:, None]).reshape(w[k].shape)  # what the reader must return
        for s in scales:
            _f32(f, s)


def reference_logits(w: dict, params: tuple, tokens: list[int]) -> torch.Tensor:
    """llama2.c's forward pass (interleaved RoPE, no herd code), for one sequence."""
    dim, _, n_layers, n_heads, n_kv_heads, _ = params
    head = dim // n_heads
    T = len(tokens)
    x = w["embed"][tokens]
    freqs = 1.0 / 10000 ** (torch.arange(0, head, 2).float() / head)
    angles = torch.outer(torch.arange(T).float(), freqs)
    cos, sin = angles.cos(), angles.sin()

    def rms(v, g):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    def rope(v, n):
        v = v.view(T, n, head // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).view(T, n * head)

    mask = torch.full((T, T), float("-inf")).triu(1)
    rep = n_heads // n_kv_heads
    for i in range(n_layers):
        h = rms(x, w["attn_norm"][i])
        q = rope(h @ w["wq"][i].T, n_heads).view(T, n_heads, head).transpose(0, 1)
        k = rope(h @ w["wk"][i].T, n_kv_heads).view(T, n_kv_heads, head).transpose(0, 1)
        v = (h @ w["wv"][i].T).view(T, n_kv_heads, head).transpose(0, 1)
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / head**0.5 + mask, dim=-1)
        x = x + (att @ v).transpose(0, 1).reshape(T, dim) @ w["wo"][i].T
        h = rms(x, w["ffn_norm"][i])
        ff = torch.nn.functional.silu(h @ w["w1"][i].T) * (h @ w["w3"][i].T)
        x = x + ff @ w["w2"][i].T
    out = w.get("output", w["embed"])
    return rms(x, w["norm"]) @ out.T
