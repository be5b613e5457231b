"""Pre-training objectives: turn packed windows of token ids into (inputs, targets, documents).

Artetxe et al. 2022 ("On the Role of Bidirectionality in Language Model Pre-Training", Figure 1)
separate two notions of bidirectionality that GPT, BERT, prefix LMs and CM3 mix up:
  bidirectional context    the model predicts tokens while seeing tokens to their right (masked
                           spans are cut out and moved to the end of the document);
  bidirectional attention  a leading region of each document attends both ways.
The two knobs span four objectives, which herd names as the paper does:

  name     context  attention  example (one document)                      loss on
  nxtuni   no       no         BOS a b c d EOS                             every next token
  nxtpre   no       yes        [BOS a b] c d EOS        ([...] both ways)  tokens after the prefix
  mskuni   yes      no         BOS a <s0> d EOS <s0> b c                   tokens after <s0> at the end
  mskbi    yes      yes        [BOS a <s0> d EOS] <s0> b c                 tokens after <s0> at the end

The paper moves single masked tokens together with their positional embeddings. In herd a token's
position follows from the packing (it counts tokens within its document, as the model's
`PackedAttention.positions` does),
so a moved token cannot keep its old one; herd moves whole spans marked by sentinel tokens instead,
as CM3 does (Aghajanyan et al. 2022, "causal masking"), which is also the form an infilling prompt
takes at inference (`infill_prompt`).

Choices the papers leave open, fixed here:
- Spans never touch the first and last token of a document piece (BOS and EOS for a whole
  document). A piece cut by the window edge keeps its edge tokens unmasked too; that loses nothing.
- A document masks `mask_fraction` of its other tokens in total (at least one, never all), split
  as evenly as possible over `n_spans` spans, placed uniformly at random without overlapping or
  touching; a document too short for that many spans gets fewer.
- Documents with fewer than 3 maskable tokens stay as they are and carry no loss under the masked
  objectives, so every loss token of MSKUNI/MSKBI is an infilled token (mixing in next-token loss
  would turn them into the paper's hybrid objectives).
- Every document grows by two tokens per span (the in-place sentinel and the appended one), so a
  transformed row is longer than the window; it is cut to the window's length, and whatever falls
  past the cut (usually the appended spans of the row's last document) simply is not predicted.
- The loss covers everything after the first appended sentinel: the span tokens and the sentinel
  that closes each span (the next span's sentinel, or the end marker when `end_marker` is on), so
  a model learns where a span ends. Without an end marker the last span has no closing token, so
  a model meant for infilling generation should be trained with one.
- Next-token targets never cross a document boundary; prefix lengths are uniform on [1, len - 1].
Everything random is drawn from the caller's torch.Generator (a CPU generator), in row order then
document order, so a batch is a pure function of (window, doc_ids, objective, generator state). The
trainer (`make_batch`) gives every row its own generator, seeded by the row's place in the data
order, so a row comes out the same in any process and any micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from herd.data.config import DataConfig
from herd.errors import HerdError

IGNORE_INDEX = -100
# name -> (bidirectional_context, bidirectional_attention)
OBJECTIVES: dict[str, tuple[bool, bool]] = {
    "nxtuni": (False, False),
    "nxtpre": (False, True),
    "mskuni": (True, False),
    "mskbi": (True, True),
}
# A document needs this many tokens besides its first and last to be worth masking: with fewer, a
# span would leave almost no context to infill from.
MIN_MASKABLE_TOKENS = 3


@dataclass
class ObjectiveConfig:
    """One point in the (bidirectional context, bidirectional attention) space.

    Give either a `name` from OBJECTIVES (the knobs follow from it, and explicit knobs must agree)
    or the two knobs (the name follows from them). `build_batch` reads only the knobs.
    """

    name: str | None = None
    bidirectional_context: bool | None = None
    bidirectional_attention: bool | None = None
    # The span settings default to the run config's (one declaration of each, in DataConfig).
    n_spans: int = DataConfig.n_spans  # masked spans per document (bidirectional context only)
    mask_fraction: float = DataConfig.mask_fraction  # share of each document's maskable tokens
    end_marker: bool = DataConfig.end_marker  # close the last span with sentinel_ids[n_spans]

    def __post_init__(self) -> None:
        if self.name is not None:
            if self.name not in OBJECTIVES:
                raise HerdError(
                    f"unknown objective '{self.name}' (expected one of: {', '.join(OBJECTIVES)})"
                )
            preset = OBJECTIVES[self.name]
            given = (self.bidirectional_context, self.bidirectional_attention)
            if any(g is not None and g != p for g, p in zip(given, preset, strict=True)):
                raise HerdError(
                    f"objective '{self.name}' means bidirectional_context={preset[0]}, "
                    f"bidirectional_attention={preset[1]}; got {given[0]}, {given[1]}"
                )
            self.bidirectional_context, self.bidirectional_attention = preset
        else:
            self.bidirectional_context = bool(self.bidirectional_context)
            self.bidirectional_attention = bool(self.bidirectional_attention)
            knobs = (self.bidirectional_context, self.bidirectional_attention)
            self.name = next(n for n, k in OBJECTIVES.items() if k == knobs)
        if self.n_spans < 1:
            raise HerdError(f"objective n_spans must be at least 1, got {self.n_spans}")
        if not 0.0 < self.mask_fraction < 1.0:
            raise HerdError(f"objective mask_fraction must be in (0, 1), got {self.mask_fraction}")

    @property
    def sentinels_needed(self) -> int:
        """How many sentinel token ids `build_batch` needs for this objective."""
        if not self.bidirectional_context:
            return 0
        return self.n_spans + int(self.end_marker)


@dataclass
class TrainBatch:
    """What a training step consumes: the inputs, their targets, and the documents they lie in.

    The batch describes documents; the model turns that into attention masks
    (`herd.model.masks.PackedAttention`). `doc_ids` is None when attention is plain causal over the
    whole row (no document mask and no bidirectional region).
    """

    inputs: torch.Tensor  # LongTensor [B, T]
    targets: torch.Tensor  # LongTensor [B, T], IGNORE_INDEX where there is no loss
    doc_ids: torch.Tensor | None  # LongTensor [B, T]: the document of every token
    bidirectional: torch.Tensor | None = None  # BoolTensor [B, T]: tokens that see both ways

    def map(self, fn) -> TrainBatch:
        """`fn` applied to each tensor (a pin, a move, a copy)."""
        doc_ids, bidir = self.doc_ids, self.bidirectional
        return TrainBatch(
            fn(self.inputs),
            fn(self.targets),
            None if doc_ids is None else fn(doc_ids),
            None if bidir is None else fn(bidir),
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> TrainBatch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def loss_count(self) -> int:
        """What the step's loss is averaged over: the targets that carry loss."""
        return int((self.targets != IGNORE_INDEX).sum())


def build_batch(
    window: torch.Tensor,
    doc_ids: torch.Tensor,
    objective: ObjectiveConfig,
    generator: torch.Generator,
    sentinel_ids: Sequence[int] = (),
) -> TrainBatch:
    """A training batch from windows of T + 1 packed tokens ([B, T + 1]) and their document ids."""
    if window.dim() != 2 or window.shape != doc_ids.shape or window.shape[1] < 2:
        raise HerdError(
            f"build_batch needs window and doc_ids of the same shape [B, T + 1] with T >= 1, "
            f"got {tuple(window.shape)} and {tuple(doc_ids.shape)}"
        )
    if bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
        raise HerdError("build_batch needs doc_ids that never decrease along a row")
    window, doc_ids = window.long(), doc_ids.long()
    if not objective.bidirectional_context:
        return _next_token_batch(window, doc_ids, objective.bidirectional_attention, generator)
    if len(sentinel_ids) < objective.sentinels_needed:
        raise HerdError(
            f"objective '{objective.name}' needs {objective.sentinels_needed} sentinel token ids "
            f"(n_spans={objective.n_spans}, end_marker={objective.end_marker}), got "
            f"{len(sentinel_ids)}: give the tokenizer's mask/sentinel special tokens"
        )
    return _masked_batch(window, doc_ids, objective, generator, [int(s) for s in sentinel_ids])


def _next_token_batch(
    window: torch.Tensor, doc_ids: torch.Tensor, prefix_lm: bool, generator: torch.Generator
) -> TrainBatch:
    """NXTUNI, or NXTPRE when `prefix_lm`: vectorised over the whole batch."""
    inputs, following = window[:, :-1], window[:, 1:]
    same_doc = doc_ids[:, 1:] == doc_ids[:, :-1]
    targets = torch.where(same_doc, following, IGNORE_INDEX)
    if not prefix_lm:
        return TrainBatch(inputs, targets, doc_ids[:, :-1])
    # Prefix LM (Raffel et al. 2020, section 3.2): per document piece, the first p tokens see each
    # other both ways and only tokens p.. are predicted, p uniform on [1, n - 1] so that at least
    # one token is predicted. The whole window's pieces count, since the window's last token is a
    # target, and a prefix never reaches it.
    B, width = window.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)  # a row's first token starts a piece
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    piece = starts.flatten().cumsum(0) - 1  # piece index over the batch, row-major
    first = starts.flatten().nonzero().squeeze(1)  # flat index of every piece's first token
    position = (torch.arange(B * width, device=window.device) - first[piece]).view(B, width)
    piece = piece.view(B, width)
    lengths = torch.bincount(piece.flatten()).cpu()
    draws = torch.rand(lengths.shape[0], generator=generator, dtype=torch.float64)
    prefix_lengths = 1 + (draws * (lengths - 1).clamp(min=0)).long()
    prefix = prefix_lengths.to(window.device)[piece]  # [B, T + 1]: its piece's prefix length
    bidirectional = (position < prefix)[:, :-1]
    targets = targets.masked_fill(position[:, 1:] < prefix[:, 1:], IGNORE_INDEX)
    return TrainBatch(inputs, targets, doc_ids[:, :-1], bidirectional)


def _masked_batch(
    window: torch.Tensor,
    doc_ids: torch.Tensor,
    objective: ObjectiveConfig,
    generator: torch.Generator,
    sentinel_ids: list[int],
) -> TrainBatch:
    """MSKUNI, or MSKBI when the objective has bidirectional attention: one document at a time."""
    width = window.shape[1]
    end_marker_id = sentinel_ids[objective.n_spans] if objective.end_marker else None
    rows: list[tuple[list[int], list[int], list[bool], list[bool]]] = []
    for tokens, docs in zip(window.tolist(), doc_ids.tolist(), strict=True):
        seq: list[int] = []
        seq_docs: list[int] = []
        both_ways: list[bool] = []
        predicted: list[bool] = []  # whether predicting this token is in the loss
        for start, end in _document_pieces(docs):
            if len(seq) >= width:  # the rest of the row would be cut off anyway
                break
            piece = tokens[start:end]
            spans = sample_spans(len(piece), objective, generator)
            if spans:
                example, context = move_spans_to_end(piece, spans, sentinel_ids, end_marker_id)
            else:
                example, context = piece, len(piece)
            # MSKBI: the context (up to the first appended sentinel) attends both ways.
            context_both_ways = objective.bidirectional_attention and bool(spans)
            seq += example
            seq_docs += [docs[start]] * len(example)
            both_ways += [context_both_ways and j < context for j in range(len(example))]
            predicted += [j > context for j in range(len(example))]
        # A document grows by 2 tokens per span, so the transformed row is at least `width` long:
        # cut it there (module docstring).
        rows.append((seq[:width], seq_docs[:width], both_ways[:width], predicted[:width]))

    def column(i: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([row[i] for row in rows], dtype=dtype, device=window.device)

    seq, seq_docs = column(0, torch.long), column(1, torch.long)
    both_ways, predicted = column(2, torch.bool), column(3, torch.bool)
    keep = predicted[:, 1:] & (seq_docs[:, 1:] == seq_docs[:, :-1])
    targets = torch.where(keep, seq[:, 1:], IGNORE_INDEX)
    bidirectional = both_ways[:, :-1] if objective.bidirectional_attention else None
    return TrainBatch(seq[:, :-1], targets, seq_docs[:, :-1], bidirectional)


def _document_pieces(docs: list[int]) -> list[tuple[int, int]]:
    """[start, end) of every run of equal document ids in one row."""
    starts = [0] + [i for i in range(1, len(docs)) if docs[i] != docs[i - 1]]
    return list(zip(starts, [*starts[1:], len(docs)], strict=True))


def sample_spans(
    length: int, objective: ObjectiveConfig, generator: torch.Generator
) -> list[tuple[int, int]]:
    """Random [start, end) spans to mask in a document piece of `length` tokens; [] if too short.

    Spans stay off the piece's first and last token, do not overlap or touch (touching spans would
    be one span with two sentinels), and come in order.
    """
    maskable = length - 2
    if maskable < MIN_MASKABLE_TOKENS:
        return []
    masked = min(max(1, round(objective.mask_fraction * maskable)), maskable - 1)
    n_spans = min(objective.n_spans, masked, maskable - masked + 1)  # k spans need k - 1 gaps
    lengths = [masked // n_spans + (k < masked % n_spans) for k in range(n_spans)]
    # Stars and bars: place the spans among the free tokens left after one mandatory gap between
    # neighbours; choosing n_spans of the (free + n_spans) slots is uniform over placements.
    free = maskable - masked - (n_spans - 1)
    slots = torch.randperm(free + n_spans, generator=generator)[:n_spans].sort().values.tolist()
    spans, masked_before = [], 0
    for k, slot in enumerate(slots):
        start = 1 + slot + masked_before  # slot - k free tokens, k gaps, the spans before
        spans.append((start, start + lengths[k]))
        masked_before += lengths[k]
    return spans


def move_spans_to_end(
    tokens: Sequence[int],
    spans: Sequence[tuple[int, int]],
    sentinel_ids: Sequence[int],
    end_marker_id: int | None = None,
) -> tuple[list[int], int]:
    """The causally masked form of a document, and the index of its first appended sentinel.

    Span k ([start, end), in order, not overlapping) is replaced in place by sentinel_ids[k]; after
    the document come, for every span, sentinel_ids[k] and the span's tokens, then the end marker
    if given. Everything before the returned index is the context.
    """
    if len(sentinel_ids) < len(spans):
        raise HerdError(f"{len(spans)} spans need as many sentinel ids, got {len(sentinel_ids)}")
    previous_end = 0
    for start, end in spans:
        if not previous_end <= start <= end <= len(tokens):
            raise HerdError(
                f"spans must be in order, not overlap and lie within the {len(tokens)} tokens, "
                f"got {list(spans)}"
            )
        previous_end = end
    context: list[int] = []
    moved: list[int] = []
    cursor = 0
    for k, (start, end) in enumerate(spans):
        context += [*tokens[cursor:start], sentinel_ids[k]]
        moved += [sentinel_ids[k], *tokens[start:end]]
        cursor = end
    context += tokens[cursor:]
    marker = [] if end_marker_id is None else [end_marker_id]
    return context + moved + marker, len(context)


def infill_prompt(
    tokens: list[int], spans: list[tuple[int, int]], sentinel_ids: Sequence[int]
) -> list[int]:
    """The prompt that asks a MSKUNI/MSKBI-trained model to fill in the first of `spans`.

    `tokens` is the document as it was trained on (BOS + text + EOS); each [start, end) span is
    replaced by its sentinel (an empty span marks an insertion point), and the first sentinel is
    repeated at the end, so the model's continuation is that span's tokens. Stop generating at
    sentinel_ids[1] (or the end marker, for a model trained with one); to fill a later span, append
    the generated span and that span's sentinel. A MSKBI model expects the prompt's context (all but
    its last token) to be prefilled with bidirectional attention, which a causal KV-cache prefill
    does not do; a MSKUNI model works with plain causal generation.
    """
    if not spans:
        raise HerdError("infill_prompt needs at least one span to fill")
    sequence, context = move_spans_to_end(tokens, spans, sentinel_ids)
    return sequence[: context + 1]


def tokenizer_sentinels(tokenizer) -> list[int]:
    """Sentinel token ids for the masked objectives: `<|mask_k|>` (tokenizers trained by herd),
    else Llama 3's `<|reserved_special_token_{10+k}|>`; empty when the tokenizer has neither."""
    named = [tokenizer.token_id(f"<|mask_{k}|>") for k in range(4)]
    if all(i is not None for i in named):
        return named
    reserved = [tokenizer.token_id(f"<|reserved_special_token_{10 + k}|>") for k in range(4)]
    return [i for i in reserved if i is not None]


def make_batch(
    window: torch.Tensor,
    docs: torch.Tensor,
    data: DataConfig,
    row_seeds: Sequence[int],
    sentinels: Sequence[int],
):
    """The TrainBatch for windows [B, T+1] under the run's objective.

    Each row draws its randomness (prefix lengths, masked spans) from its own generator seeded
    with `row_seeds[i]` (PackedBatches gives every drawn window one), so a row's example is the
    same whichever process builds it and however the step is split into micro-batches.
    """
    if data.objective not in OBJECTIVES:
        raise HerdError(
            f"data.objective '{data.objective}': expected one of {', '.join(OBJECTIVES)}"
        )
    if len(row_seeds) != window.shape[0]:
        raise HerdError(
            f"make_batch needs one seed per row: {len(row_seeds)} for {window.shape[0]}"
        )
    cfg = ObjectiveConfig(
        name=data.objective,
        n_spans=data.n_spans,
        mask_fraction=data.mask_fraction,
        end_marker=data.end_marker,
    )
    if cfg.bidirectional_context or cfg.bidirectional_attention:
        rows = [
            build_batch(
                window[i : i + 1],
                docs[i : i + 1],
                cfg,
                torch.Generator().manual_seed(int(seed)),
                sentinels,
            )
            for i, seed in enumerate(row_seeds)
        ]
        bidir = [r.bidirectional for r in rows]
        batch = TrainBatch(
            torch.cat([r.inputs for r in rows]),
            torch.cat([r.targets for r in rows]),
            torch.cat([r.doc_ids for r in rows]),
            None if bidir[0] is None else torch.cat(bidir),
        )
    else:  # next-token prediction draws nothing: the whole batch at once
        batch = build_batch(window, docs, cfg, torch.Generator(), sentinels)
    if not (data.document_mask or cfg.bidirectional_attention):
        batch.doc_ids = None  # plain causal attention over the whole row
    return batch
