"""llama2.c `.bin` model files: the legacy header and the versioned v1 (fp32) / v2 (Q8_0) headers.

Formats, as written by llama2.c's export.py:
- legacy (v0): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len);
  a negative vocab_size means the classifier is *not* shared. Then fp32 tensors, each stacked over
  layers: embeddings, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, the RoPE
  cos and sin tables [max_seq_len, head_dim/2] (derived; skipped), and the classifier if unshared.
- v1: uint32 magic "ak42" (0x616b3432), int32 version 1, the 7 int32 params, a uint8 shared-classifier
  flag, zero padding to 256 bytes. Then fp32: attention norms, ffn norms, final norm, embeddings,
  wq, wk, wv, wo, w1, w2, w3 (each over layers), classifier if unshared.
- v2: like v1 plus an int32 group size after the flag. Norms in fp32 as in v1, then every matrix of v1's
  order (embeddings first) as int8 values, then all their fp32 per-group scales (value = q * scale).

llama2.c's model uses Meta's interleaved RoPE layout; q/k rows are permuted to herd's on import.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from herd.errors import HerdError
from herd.model.config import ModelConfig
from herd.model.rope import interleaved_to_half

MAGIC = 0x616B3432
HEADER_BYTES = 256
_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
_HERD_NAMES = {
    "wq": "attn.wq.weight",
    "wk": "attn.wk.weight",
    "wv": "attn.wv.weight",
    "wo": "attn.wo.weight",
    "w1": "ffn.w1.weight",
    "w2": "ffn.w2.weight",
    "w3": "ffn.w3.weight",
}


class _Reader:
    """Sequential reader over a memory-mapped file with bounds checks."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        self.offset = offset

    def take(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        nbytes = count * np.dtype(dtype).itemsize
        if self.offset + nbytes > len(self.data):
            raise HerdError(
                f"{self.path}: file ends inside {what} (needs {self.offset + nbytes} bytes, "
                f"has {len(self.data)}): truncated or wrong header"
            )
        out = self.data[self.offset : self.offset + nbytes].view(dtype)
        self.offset += nbytes
        return out

    def fp32(self, shape: tuple[int, ...], what: str) -> torch.Tensor:
        n = int(np.prod(shape))
        return torch.from_numpy(self.take(np.float32, n, what).copy()).view(shape)


def _header(path: Path) -> tuple[int, tuple[int, ...], bool, int]:
    """(version, 7 params, shared classifier, group size) from the start of the file."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < 28:
        raise HerdError(f"{path}: too short for a llama2.c header ({len(head)} bytes)")
    (magic,) = struct.unpack_from("<I", head, 0)
    if magic != MAGIC:
        params = struct.unpack_from("<7i", head, 0)
        return 0, params, params[5] > 0, 0
    if len(head) < HEADER_BYTES:
        raise HerdError(f"{path}: header shorter than {HEADER_BYTES} bytes")
    (version,) = struct.unpack_from("<i", head, 4)
    params = struct.unpack_from("<7i", head, 8)
    shared = bool(head[36])
    if version == 1:
        return 1, params, shared, 0
    if version == 2:
        (group,) = struct.unpack_from("<i", head, 37)
        if group <= 0:
            raise HerdError(f"{path}: group size {group} in the v2 header, expected positive")
        return 2, params, shared, group
    raise HerdError(f"{path}: llama2.c version {version} is not supported (expected 0, 1 or 2)")


def read_llama2c_config(path: Path) -> ModelConfig:
    _, params, shared, _ = _header(path)
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = params
    values = dict(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=abs(vocab),
        ffn_dim=hidden,
        norm_eps=1e-5,
        rope_theta=10000.0,
        max_seq_len=seq_len,
        tie_embeddings=shared,
    )
    return ModelConfig.from_dict(values, source=f"{path}: header")


def read_llama2c(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise HerdError(f"{path}: file not found")
    version, _, shared, group = _header(path)
    config = read_llama2c_config(path)
    c = config
    L, D, F, V = c.n_layers, c.dim, c.ffn_dim, c.vocab_size
    kv_dim = c.n_kv_heads * c.head_dim
    shapes = {
        "wq": (D, D),
        "wk": (kv_dim, D),
        "wv": (kv_dim, D),
        "wo": (D, D),
        "w1": (F, D),
        "w2": (D, F),
        "w3": (F, D),
    }
    r = _Reader(path, 0 if version == 0 else HEADER_BYTES)
    w: dict[str, torch.Tensor] = {}
    if version == 0:
        r.offset = 28
        w["embed"] = r.fp32((V, D), "token embeddings")
        w["attn_norm"] = r.fp32((L, D), "attention norms")
        for m in _MATRICES[:4]:
            w[m] = r.fp32((L, *shapes[m]), m)
        w["ffn_norm"] = r.fp32((L, D), "ffn norms")
        for m in _MATRICES[4:]:
            w[m] = r.fp32((L, *shapes[m]), m)
        w["norm"] = r.fp32((D,), "final norm")
        r.take(np.float32, 2 * c.max_seq_len * c.head_dim // 2, "RoPE tables")
        if not shared:
            w["output"] = r.fp32((V, D), "classifier")
    else:
        w["attn_norm"] = r.fp32((L, D), "attention norms")
        w["ffn_norm"] = r.fp32((L, D), "ffn norms")
        w["norm"] = r.fp32((D,), "final norm")
        order = [("embed", (V, D))] + [(m, (L, *shapes[m])) for m in _MATRICES]
        if not shared:
            order.append(("output", (V, D)))
        if version == 1:
            for name, shape in order:
                w[name] = r.fp32(shape, name)
        else:
            quantized = []
            for name, shape in order:
                n = int(np.prod(shape))
                if n % group:
                    raise HerdError(f"{path}: {name} has {n} values, not a multiple of {group}")
                quantized.append((name, shape, r.take(np.int8, n, f"{name} (int8)")))
            for name, shape, q in quantized:
                n = q.size
                scale = r.take(np.float32, n // group, f"{name} scales")
                deq = q.astype(np.float32).reshape(-1, group) * scale[:, None]
                w[name] = torch.from_numpy(deq.reshape(shape))
    if r.offset != len(r.data):
        raise HerdError(
            f"{path}: {len(r.data) - r.offset} unexpected trailing bytes after the weights "
            f"(header says version {version}, shared classifier {shared})"
        )
    return config, _to_herd(config, w)


def _to_herd(config: ModelConfig, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {"embed.weight": w["embed"], "norm.weight": w["norm"]}
    if "output" in w:
        sd["output.weight"] = w["output"]
    for i in range(config.n_layers):
        sd[f"layers.{i}.attn_norm.weight"] = w["attn_norm"][i]
        sd[f"layers.{i}.ffn_norm.weight"] = w["ffn_norm"][i]
        for m in _MATRICES:
            t = w[m][i]
            if m == "wq":
                t = interleaved_to_half(t, config.n_heads)
            elif m == "wk":
                t = interleaved_to_half(t, config.n_kv_heads)
            sd[f"layers.{i}.{_HERD_NAMES[m]}"] = t.contiguous()
    return sd
