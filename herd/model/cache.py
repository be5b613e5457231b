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
    extra last position is scratch: a fixed-shape (compiled) step runs every slot, and the slots
    with nothing to decode write there, leaving any KV they hold for reuse intact.

    `rows(index, length)` is what a forward pass takes: the rows it runs (a LongTensor of slot
    indices; None = all slots, the fixed-shape step) and the positions attention reads (None =
    all; an eager step reads only up to the longest row's position).
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

    def rows(self, index: torch.Tensor | None = None, length: int | None = None) -> SlotRows:
        return SlotRows(self, index, length)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Copy the first n positions of slot `src` into slot `dst` (a shared prompt prefix)."""
        for buf in (*self.keys, *self.values):
            buf[dst, :, :n] = buf[src, :, :n]

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class SlotRows:
    """The rows of a SlotKVCache one forward pass runs: the cache interface the model calls."""

    bidirectional = 0

    def __init__(self, cache: SlotKVCache, index: torch.Tensor | None, length: int | None) -> None:
        self.cache = cache
        self.index = index
        self.length = length

    def update(
        self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, KV, T, D] at `input_pos` [B, T] of this pass's rows; return what
        attention reads, [B, KV, length, D]."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        B = k.shape[0]
        rows = self.index if self.index is not None else torch.arange(B, device=k.device)
        # Advanced indices (row, position) on the [slots, len, KV, D] view write each row's tokens
        # at that row's own positions.
        at = (rows.unsqueeze(1), input_pos)
        keys.transpose(1, 2).index_put_(at, k.transpose(1, 2))
        values.transpose(1, 2).index_put_(at, v.transpose(1, 2))
        if self.index is not None:
            keys, values = keys[self.index], values[self.index]
        if self.length is not None:
            keys, values = keys[:, :, : self.length], values[:, :, : self.length]
        return keys, values

    def mask(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Boolean [B, 1, T, length]: each row's query at position p sees its positions <= p."""
        positions = self.cache.positions
        if self.length is not None:
            positions = positions[: self.length]
        return (positions.view(1, 1, -1) <= input_pos.unsqueeze(-1)).unsqueeze(1)
