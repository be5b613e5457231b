"""Pre-training objectives (Artetxe et al. 2022): exact small batches for NXTUNI, NXTPRE, MSKUNI and
MSKBI, no targets across documents, the two knobs, determinism, and a tiny model training on each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import herd
from herd import HerdError
from herd.data.objectives import (
    IGNORE_INDEX,
    OBJECTIVES,
    ObjectiveConfig,
    build_batch,
    infill_prompt,
    move_spans_to_end,
    sample_spans,
)
from herd.model.masks import PackedAttention

BOS, EOS = 1, 2
S0, S1, S2 = 60, 61, 62
X = IGNORE_INDEX
# Two whole documents and the start of a third: [BOS 5 6 7 8 EOS] [BOS 9 10 11 12 EOS] [BOS 13 ...
WINDOW = torch.tensor([[1, 5, 6, 7, 8, 2, 1, 9, 10, 11, 12, 2, 1, 13, 14, 15, 16, 17, 18, 19]])
DOCS = torch.tensor([[0] * 6 + [1] * 6 + [2] * 8])


def batch(name, window=WINDOW, docs=DOCS, seed=0, sentinels=(S0, S1, S2), end_marker=False, **kw):
    """A batch under objective `name`; without an end marker unless asked (the exact layouts
    below are written for spans closed only by the next span's sentinel)."""
    generator = torch.Generator().manual_seed(seed)
    config = ObjectiveConfig(name=name, end_marker=end_marker, **kw)
    return build_batch(window, docs, config, generator, sentinels)


def random_window(seed: int, batch_size: int = 3, width: int = 65):
    """Rows of packed documents (BOS + 0-12 tokens + EOS), cut at random, with their doc ids."""
    rng = torch.Generator().manual_seed(seed)
    windows, docs = [], []
    for _ in range(batch_size):
        stream, ids, doc = [], [], 0
        while len(stream) < width + 20:
            n = int(torch.randint(0, 13, (1,), generator=rng))
            body = torch.randint(3, 50, (n,), generator=rng).tolist()
            stream += [BOS, *body, EOS]
            ids += [doc] * (n + 2)
            doc += 1
        offset = int(torch.randint(0, 10, (1,), generator=rng))
        windows.append(stream[offset : offset + width])
        docs.append(ids[offset : offset + width])
    return torch.tensor(windows), torch.tensor(docs)


def test_nxtuni_exact():
    b = batch("nxtuni")
    assert b.inputs.tolist() == [WINDOW[0, :-1].tolist()]
    # no target across a document boundary: EOS never predicts the next BOS
    expected = [5, 6, 7, 8, 2, X, 9, 10, 11, 12, 2, X, 13, 14, 15, 16, 17, 18, 19]
    assert b.targets.tolist() == [expected]
    assert b.doc_ids.tolist() == [[0] * 6 + [1] * 6 + [2] * 7]
    assert b.bidirectional is None


def test_nxtpre_exact():
    # seed 0 draws prefixes of 5, 4 and 4 tokens for the three documents
    b = batch("nxtpre")
    assert b.inputs.tolist() == [WINDOW[0, :-1].tolist()]
    assert b.targets.tolist() == [[X, X, X, X, 2, X, X, X, X, 12, 2, X, X, X, X, 16, 17, 18, 19]]
    assert b.doc_ids.tolist() == [[0] * 6 + [1] * 6 + [2] * 7]
    bidirectional = [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert b.bidirectional.int().tolist() == [bidirectional]


def test_nxtpre_prefix_is_uniform_and_never_in_the_loss():
    window = torch.tensor([[BOS, 5, 6, 7, EOS, BOS, 8, 9]])
    docs = torch.tensor([[0] * 5 + [1] * 3])
    seen = set()
    for seed in range(200):
        b = batch("nxtpre", window, docs, seed)
        bidirectional = b.bidirectional[0].tolist()
        prefix = sum(bidirectional[:5])
        seen.add(prefix)
        assert bidirectional[:5] == [True] * prefix + [False] * (5 - prefix)
        # input i predicts token i + 1: loss exactly on tokens at or past the prefix
        expected = [window[0, i + 1].item() if i + 1 >= prefix else X for i in range(4)]
        assert b.targets[0, :4].tolist() == expected
        assert b.targets[0, 4].item() == X  # EOS does not predict the next BOS
    assert seen == {1, 2, 3, 4}


def test_mskuni_exact():
    # seed 0 masks token 5 of the first document and token 9 of the second; the third document's
    # appended span falls past the end of the row and is cut off
    b = batch("mskuni")
    doc0 = [BOS, S0, 6, 7, 8, EOS, S0, 5]
    doc1 = [BOS, S0, 10, 11, 12, EOS, S0, 9]
    assert b.inputs.tolist() == [[*doc0, *doc1, BOS, 13, S0]]
    assert b.targets.tolist() == [[X] * 6 + [5, X] + [X] * 6 + [9, X] + [X] * 3]
    assert b.doc_ids.tolist() == [[0] * 8 + [1] * 8 + [2] * 3]
    assert b.bidirectional is None


def test_mskbi_is_mskuni_with_a_bidirectional_context():
    uni, bi = batch("mskuni"), batch("mskbi")
    assert torch.equal(uni.inputs, bi.inputs) and torch.equal(uni.targets, bi.targets)
    assert torch.equal(uni.doc_ids, bi.doc_ids)
    # the context, up to the first appended sentinel, of every document; the cut-off third
    # document is all context
    assert bi.bidirectional.int().tolist() == [[1] * 6 + [0, 0] + [1] * 6 + [0, 0] + [1] * 3]


def test_several_spans_with_an_end_marker_exact():
    window = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11, 12, 2, 1, 20, 21, 2, 1, 30, 2]])
    docs = torch.tensor([[0] * 10 + [1] * 4 + [2] * 3])
    b = batch("mskuni", window, docs, n_spans=2, mask_fraction=0.5, end_marker=True)
    # spans [5 6] and [11 12]; the documents with fewer than 3 maskable tokens stay as they are
    assert b.inputs.tolist() == [[1, S0, 7, 8, 9, 10, S1, 2, S0, 5, 6, S1, 11, 12, S2, 1]]
    # each span's tokens are predicted, and so is the token that closes it (S1, then the marker)
    assert b.targets.tolist() == [[X] * 8 + [5, 6, S1, 11, 12, S2, X, X]]
    assert b.doc_ids.tolist() == [[0] * 15 + [1]]


def put_spans_back(seq: list[int], context: int) -> list[int]:
    """Undo the masking of one transformed document: each in-place sentinel by its moved span."""
    spans: dict[int, list[int]] = {}
    for t in seq[context:]:
        if t in (S0, S1, S2):
            sentinel = t
            spans[sentinel] = []
        else:
            spans[sentinel].append(t)
    return [u for t in seq[:context] for u in spans.get(t, [t])]


@pytest.mark.parametrize("name", ["mskuni", "mskbi"])
@pytest.mark.parametrize("n_spans", [1, 2, 3])
def test_masked_structure_on_random_windows(name, n_spans):
    for seed in range(5):
        window, docs = random_window(seed)
        b = batch(name, window, docs, seed, n_spans=n_spans, mask_fraction=0.3)
        assert b.inputs.shape == b.targets.shape == b.doc_ids.shape == (3, 64)
        for row in range(3):
            tokens = [*b.inputs[row].tolist(), None]  # the row's last target is not an input
            targets, ids = b.targets[row].tolist(), b.doc_ids[row].tolist()
            original, original_ids = window[row].tolist(), docs[row].tolist()
            for doc in sorted(set(ids)):
                where = [i for i, d in enumerate(ids) if d == doc]
                lo, hi = where[0], where[-1] + 1
                seq = tokens[lo:hi]
                firsts = [i for i, t in enumerate(seq) if t == S0]
                if len(firsts) < 2:  # unmasked or cut off before its appended part: no loss
                    assert all(t == X for t in targets[lo : hi - 1])
                    continue
                context = firsts[1]
                # loss exactly on the tokens after the first appended sentinel
                for i in range(lo, hi - 1):
                    expected = tokens[i + 1] if i + 1 - lo > context else X
                    assert targets[i] == expected
                # in place: sentinel k replaces span k, and the spans follow in the same order
                placed = [t for t in seq[:context] if t in (S0, S1, S2)]
                assert placed == [S0, S1, S2][: len(placed)] and 1 <= len(placed) <= n_spans
                if hi < len(ids):  # not cut by the row end: putting the spans back restores it
                    piece = [t for t, d in zip(original, original_ids, strict=True) if d == doc]
                    assert put_spans_back(seq, context) == piece
                bidirectional = b.bidirectional
                if name == "mskbi":
                    assert bidirectional[row, lo:hi].tolist()[:context] == [True] * context
                    assert not any(bidirectional[row, lo + context : hi].tolist())
                else:
                    assert bidirectional is None


def test_span_tokens_are_moved_not_changed():
    tokens = [BOS, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, EOS]
    config = ObjectiveConfig(name="mskuni", n_spans=2, mask_fraction=0.4)
    starts = set()
    for seed in range(300):
        spans = sample_spans(len(tokens), config, torch.Generator().manual_seed(seed))
        assert len(spans) == 2 and sum(e - s for s, e in spans) == 4
        (a, b), (c, d) = spans
        assert 1 <= a < b < c < d <= len(tokens) - 1  # apart, and off BOS and EOS
        starts.add(a)
        sequence, context = move_spans_to_end(tokens, spans, [S0, S1])
        expected_context = [*tokens[:a], S0, *tokens[b:c], S1, *tokens[d:]]
        assert sequence[:context] == expected_context
        assert sequence[context:] == [S0, *tokens[a:b], S1, *tokens[c:d]]
    assert starts == set(range(1, 8))  # every placement of the first span occurs


def test_short_documents_are_not_masked():
    config = ObjectiveConfig(name="mskuni")
    generator = torch.Generator().manual_seed(0)
    assert [sample_spans(n, config, generator) for n in range(5)] == [[]] * 5
    assert len(sample_spans(5, config, generator)) == 1
    b = batch("mskuni", torch.tensor([[BOS, 5, 6, EOS, BOS, 7]]), torch.tensor([[0] * 4 + [1] * 2]))
    assert b.inputs.tolist() == [[BOS, 5, 6, EOS, BOS]]
    assert b.targets.tolist() == [[X] * 5]


def test_a_document_cut_by_the_row_end_loses_what_falls_past_it():
    # one long document, no EOS in the window: it grows by 2 tokens, so the row is cut
    window = torch.tensor([[BOS, *range(5, 24)]])
    docs = torch.zeros_like(window)
    # a 1-token span: the whole appended part falls past the end, nothing is predicted
    b = batch("mskuni", window, docs, mask_fraction=0.05)
    start = b.inputs[0].tolist().index(S0)
    assert b.inputs.tolist() == [[*window[0, :start].tolist(), S0, *window[0, start + 1 : -1]]]
    assert (b.targets == X).all()
    # a 3-token span: the appended sentinel and the span's first token still fit, and only that
    # token is predicted
    b = batch("mskuni", window, docs)
    start = b.inputs[0].tolist().index(S0)
    original = window[0].tolist()
    assert b.inputs.tolist() == [[*original[:start], S0, *original[start + 3 :], S0]]
    assert b.targets.tolist() == [[X] * 18 + [original[start]]]


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_no_target_crosses_a_document(name):
    for seed in range(5):
        window, docs = random_window(seed)
        b = batch(name, window, docs, seed)
        ids = b.doc_ids
        assert ((b.targets[:, :-1] == X) | (ids[:, 1:] == ids[:, :-1])).all()
        if name.startswith("nxt"):
            crossing = docs[:, 1:] != docs[:, :-1]
            assert (b.targets[crossing] == X).all()
            kept = b.targets != X
            assert torch.equal(b.targets[kept], window[:, 1:][kept])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_deterministic_given_the_generator(name):
    window, docs = random_window(1)
    first, again = batch(name, window, docs, 7), batch(name, window, docs, 7)
    other = batch(name, window, docs, 8)
    for field in ("inputs", "targets"):
        assert torch.equal(getattr(first, field), getattr(again, field))
    if name != "nxtuni":  # nxtuni draws nothing
        assert not torch.equal(first.targets, other.targets)


def test_the_knobs_are_the_objectives():
    window, docs = random_window(2)
    for name, (context, attention) in OBJECTIVES.items():
        by_name = ObjectiveConfig(name=name)
        by_knobs = ObjectiveConfig(bidirectional_context=context, bidirectional_attention=attention)
        assert by_knobs.name == name
        assert by_name.bidirectional_context == context
        assert by_name.bidirectional_attention == attention
        a = build_batch(window, docs, by_name, torch.Generator().manual_seed(3), (S0, S1))
        b = build_batch(window, docs, by_knobs, torch.Generator().manual_seed(3), (S0, S1))
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert (a.bidirectional is None) == (not attention)
        # bidirectional context is what moves tokens: the inputs are the window only without it
        assert torch.equal(a.inputs, window[:, :-1]) == (not context)
    assert ObjectiveConfig().name == "nxtuni"
    with pytest.raises(HerdError, match="nxtuni"):
        ObjectiveConfig(name="nxtuni", bidirectional_attention=True)
    with pytest.raises(HerdError, match="expected one of"):
        ObjectiveConfig(name="bert")


def test_masked_objectives_need_sentinels():
    with pytest.raises(HerdError, match="needs 1 sentinel"):
        batch("mskuni", sentinels=())
    with pytest.raises(HerdError, match="needs 3 sentinel"):
        batch("mskbi", sentinels=(S0, S1), n_spans=2, end_marker=True)
    batch("nxtpre", sentinels=())  # next-token objectives need none


def test_infill_prompt():
    tokens = [BOS, 5, 6, 7, 8, EOS]
    assert infill_prompt(tokens, [(2, 4)], [S0, S1]) == [BOS, 5, S0, 8, EOS, S0]
    assert infill_prompt(tokens, [(1, 2), (3, 4)], [S0, S1]) == [BOS, S0, 6, S1, 8, EOS, S0]
    assert infill_prompt(tokens, [(3, 3)], [S0]) == [BOS, 5, 6, S0, 7, 8, EOS, S0]  # insertion
    # the prompt is exactly the start of a training example, up to the span the model writes
    sequence, context = move_spans_to_end(tokens, [(2, 4)], [S0])
    assert sequence[: context + 1] == infill_prompt(tokens, [(2, 4)], [S0])
    with pytest.raises(HerdError, match="overlap"):
        infill_prompt(tokens, [(1, 3), (2, 4)], [S0, S1])
    with pytest.raises(HerdError, match="sentinel"):
        infill_prompt(tokens, [(1, 2), (3, 4)], [S0])
    with pytest.raises(HerdError, match="at least one span"):
        infill_prompt(tokens, [], [S0])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_tiny_model_trains_on_every_objective(name):
    config = herd.ModelConfig(
        dim=32, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=64, ffn_dim=64, max_seq_len=64
    )
    model = herd.build_model(config, seed=0)
    window, docs = random_window(4, width=49)
    b = batch(name, window, docs, n_spans=2, mask_fraction=0.3)
    assert (b.targets != X).any()
    logits = model(b.inputs, packed=PackedAttention.of(b.doc_ids, b.bidirectional))
    loss = F.cross_entropy(logits.flatten(0, 1), b.targets.flatten(), ignore_index=X)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
