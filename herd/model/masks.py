"""Attention masks for packed training sequences: causal, document, prefix (bidirectional) masks.

One rule covers every objective herd trains (Artetxe et al. 2022 and Llama 3's document masking):
query token i may attend key token j when both belong to the same document and either j <= i
(causal) or both lie in their document's bidirectional region (a prefix-LM prefix, or the context
part of a masked-infilling example). Positions restart at 0 for every document, so a document's
logits do not depend on what was packed before it.

Two forms of the rule with identical semantics:
- a FlexAttention BlockMask (`with_block_mask`), which lets the attention kernel skip fully masked
  blocks and never materialises a T x T matrix. It is built once per batch, outside the model, by
  the compiled `create_block_mask`, and every layer (and validation) reuses it. Both the builder
  and `flex_attention` itself run compiled: PyTorch's eager FlexAttention is a reference that
  builds the whole T x T score matrix, which at 8K context runs out of memory or crawls.
- a dense boolean mask [B, 1, T, T] for scaled_dot_product_attention (`dense`), used where
  FlexAttention cannot train: torch has no FlexAttention backward on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PackedAttention:
    """Which document every token belongs to, and which tokens see their document both ways.

    doc_ids: LongTensor [B, T], non-decreasing along T within a row (a pack of documents).
    bidirectional: BoolTensor [B, T] or None (plain causal attention within documents).
    flex: the same rule as a FlexAttention BlockMask, once `with_block_mask` has built it; the
    model uses it when present.
    """

    doc_ids: torch.Tensor
    bidirectional: torch.Tensor | None = None
    flex: Any = None

    @classmethod
    def of(
        cls, doc_ids: torch.Tensor | None, bidirectional: torch.Tensor | None = None
    ) -> PackedAttention | None:
        """The attention rule for a batch's documents, in the form attention takes on their
        device (`for_attention`); None (plain causal) for a batch without documents."""
        return None if doc_ids is None else cls(doc_ids, bidirectional).for_attention()

    def positions(self) -> torch.Tensor:
        """Position of every token within its own document: LongTensor [B, T]."""
        B, T = self.doc_ids.shape
        index = torch.arange(T, device=self.doc_ids.device).expand(B, T)
        starts = torch.ones_like(self.doc_ids, dtype=torch.bool)
        starts[:, 1:] = self.doc_ids[:, 1:] != self.doc_ids[:, :-1]
        # index of the latest document start at or before each token
        start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
        return index - start_index

    def dense(self) -> torch.Tensor:
        """BoolTensor [B, 1, T, T]: True where attention is allowed."""
        T = self.doc_ids.shape[1]
        same_doc = self.doc_ids[:, :, None] == self.doc_ids[:, None, :]
        causal = torch.ones(T, T, dtype=torch.bool, device=self.doc_ids.device).tril()
        allowed = causal[None]
        if self.bidirectional is not None:
            both = self.bidirectional[:, :, None] & self.bidirectional[:, None, :]
            allowed = allowed | both
        return (same_doc & allowed)[:, None]

    def with_block_mask(self) -> PackedAttention:
        """This rule with its FlexAttention BlockMask built (by the compiled builder)."""
        doc, bidir = self.doc_ids, self.bidirectional
        B, T = doc.shape

        def rule(b, h, q, k):
            allowed = k <= q
            if bidir is not None:
                allowed = allowed | (bidir[b, q] & bidir[b, k])
            return (doc[b, q] == doc[b, k]) & allowed

        mask = _compiled("create_block_mask")(rule, B, None, T, T, device=doc.device)
        return dataclasses.replace(self, flex=mask)

    def for_attention(self) -> PackedAttention:
        """The form the attention takes on this device: with its block mask where FlexAttention
        trains (CUDA), as it is elsewhere (the model makes the dense mask)."""
        if self.flex is None and self.doc_ids.is_cuda:
            return self.with_block_mask()
        return self

    def map(self, fn) -> PackedAttention:
        """`fn` applied to each tensor (a block mask is not carried: build it after a move)."""
        bidir = self.bidirectional
        return PackedAttention(fn(self.doc_ids), None if bidir is None else fn(bidir))

    def to(self, device: torch.device, non_blocking: bool = False) -> PackedAttention:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))


@functools.cache
def _compiled(name: str):
    """torch.compile'd FlexAttention functions, compiled once per process and reused."""
    from torch.nn.attention import flex_attention as flex

    return torch.compile(getattr(flex, name), dynamic=False)


def flex_attention(q, k, v, block_mask, enable_gqa: bool) -> torch.Tensor:
    """FlexAttention through the compiled kernel (inside a block being compiled, the plain
    function: the block's graph compiles it)."""
    if torch.compiler.is_compiling():
        from torch.nn.attention.flex_attention import flex_attention as flex

        return flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    return _compiled("flex_attention")(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
