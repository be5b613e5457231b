"""Attention masks for packed training sequences: causal, document, prefix (bidirectional) masks.

One rule covers every objective herd trains (Artetxe et al. 2022 and Llama 3's document masking):
query token i may attend key token j when both belong to the same document and either j <= i
(causal) or both lie in their document's bidirectional region (a prefix-LM prefix, or the context
part of a masked-infilling example). Positions restart at 0 for every document, so a document's
logits do not depend on what was packed before it.

On CUDA the rule becomes a FlexAttention block mask (blocks that are fully masked are skipped);
elsewhere it is a dense boolean mask for scaled_dot_product_attention with identical semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedAttention:
    """Which document every token belongs to, and which tokens see their document both ways.

    doc_ids: LongTensor [B, T], non-decreasing along T within a row (a pack of documents).
    bidirectional: BoolTensor [B, T] or None (plain causal attention within documents).
    """

    doc_ids: torch.Tensor
    bidirectional: torch.Tensor | None = None

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

    def block_mask(self, n_heads: int):
        """FlexAttention BlockMask with the same rule (CUDA)."""
        from torch.nn.attention.flex_attention import create_block_mask

        doc, bidir = self.doc_ids, self.bidirectional
        B, T = doc.shape

        def rule(b, h, q, k):
            allowed = k <= q
            if bidir is not None:
                allowed = allowed | (bidir[b, q] & bidir[b, k])
            return (doc[b, q] == doc[b, k]) & allowed

        return create_block_mask(rule, B, None, T, T, device=doc.device)
