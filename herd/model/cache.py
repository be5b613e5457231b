"""Static key/value cache: allocated once for a maximum batch and length, updated in place.

Fixed shapes let the decode step be compiled once (and captured in a CUDA graph); positions arrive
as a tensor, so writing into the cache and building the attention mask never syncs with the host.
"""

from __future__ import annotations

import torch

from herd.model.config import ModelConfig


class KVCache:
    """Per-layer key and value buffers of shape [batch, n_kv_heads, max_len, head_dim]."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)
        ]
        self.batch_size = batch_size
        self.max_len = max_len
        self.positions = torch.arange(max_len, device=device)
        # The first `bidirectional` positions attend each other both ways: a prefix-LM prefix or
        # an infilling prompt's context, as nxtpre and mskbi models are trained. herd.generation sets
        # it for the prefill only (later positions are causal either way), so a compiled decode
        # step never depends on it.
        self.bidirectional = 0

    def first_row(self) -> KVCache:
        """A cache over row 0 of this one, sharing its storage: prefill one prompt there, then
        `share_prefix` gives every row its KV (best-of-n sampling)."""
        view = KVCache.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        view.keys = [k[:1] for k in self.keys]
        view.values = [v[:1] for v in self.values]
        view.batch_size = 1
        return view

    def share_prefix(self, n: int) -> None:
        """Copy row 0's first n positions into every other row."""
        for buf in (*self.keys, *self.values):
            buf[1:, :, :n] = buf[:1, :, :n]

    def update(
        self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, KV, T, D] at `input_pos` [T] and return the whole layer cache."""
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, input_pos, k)
        values.index_copy_(2, input_pos, v)
        return keys, values

    def mask(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Boolean [T, max_len]: query at position p sees cached positions <= p, and the whole
        bidirectional region when p lies in it."""
        visible = self.positions.unsqueeze(0) <= input_pos.unsqueeze(1)
        if self.bidirectional:
            n = self.bidirectional
            visible = visible | ((input_pos < n).unsqueeze(1) & (self.positions < n).unsqueeze(0))
        return visible


class SlotKVCache:
    """Key/value buffers for serving: every row (a slot) holds one request at its own position.

    Buffers are [slots, n_kv_heads, max_len + 1, head_dim]. `input_pos` is [B, T], a position per
    row and token, so requests of different lengths decode in one batch (continuous batching). The
    extra last position is scratch: rows with nothing to decode in a step write there, leaving any
    KV they hold for reuse intact.

    `rows(start, stop, length)` is what a forward pass takes: a contiguous range of rows and the
    positions attention reads (None = all). Both are slices, so attention reads the buffers in
    place; gathering scattered rows instead copies every row's cache each layer, which cost more
    than the whole decode step's matrix products at 16 rows (2 CPU cores). The serving engine
    keeps its running requests in the leading rows (`swap`) so a step's rows are a range.
    """

    def __init__(
        self,
        config: ModelConfig,
        slots: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (slots, config.n_kv_heads, max_len + 1, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)
        ]
        self.slots = slots
        self.max_len = max_len
        self.scratch = max_len
        self.positions = torch.arange(max_len + 1, device=device)

    def rows(self, start: int = 0, stop: int | None = None, length: int | None = None) -> SlotRows:
        return SlotRows(self, start, self.slots if stop is None else stop, length)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Copy the first n positions of slot `src` into slot `dst` (a shared prompt prefix)."""
        for buf in (*self.keys, *self.values):
            buf[dst, :, :n] = buf[src, :, :n]

    def swap(self, a: int, b: int, len_a: int, len_b: int) -> None:
        """Exchange rows a and b, of which the first len_a and len_b positions hold KV."""
        for buf in (*self.keys, *self.values):
            held = buf[a, :, :len_a].clone()
            buf[a, :, :len_b] = buf[b, :, :len_b]
            buf[b, :, :len_a] = held

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class SlotRows:
    """The rows [start, stop) of a SlotKVCache one forward pass runs: the cache interface the
    model calls. Batch row i of the pass is cache row start + i."""

    bidirectional = 0

    def __init__(self, cache: SlotKVCache, start: int, stop: int, length: int | None) -> None:
        self.cache = cache
        self.start, self.stop = start, stop
        self.length = length

    def update(
        self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, KV, T, D] at `input_pos` [B, T] of this pass's rows; return what
        attention reads, [B, KV, length, D], a view of the buffers."""
        keys = self.cache.keys[layer][self.start : self.stop]
        values = self.cache.values[layer][self.start : self.stop]
        rows = torch.arange(k.shape[0], device=k.device).unsqueeze(1)
        # Advanced indices (row, position) on the [rows, len, KV, D] view write each row's tokens
        # at that row's own positions.
        keys.transpose(1, 2).index_put_((rows, input_pos), k.transpose(1, 2))
        values.transpose(1, 2).index_put_((rows, input_pos), v.transpose(1, 2))
        if self.length is not None:
            keys, values = keys[:, :, : self.length], values[:, :, : self.length]
        return keys, values

    def mask(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Boolean [B, 1, T, length]: each row's query at position p sees its positions <= p."""
        positions = self.cache.positions
        if self.length is not None:
            positions = positions[: self.length]
        return (positions.view(1, 1, -1) <= input_pos.unsqueeze(-1)).unsqueeze(1)
