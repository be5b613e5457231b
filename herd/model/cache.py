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
