"""Pieces of the XLM-V builder with known answers: ALP, smoothed sampling, greedy capacity
allocation, pruning and merging unigram models."""

from __future__ import annotations

import math

import pytest

from herd.vocab import unigram
from herd.vocab.build import allocate, size_grid, smoothed_sample
from herd.vocab.corpus import Language, alp


def test_alp_known_value():
    # pieces a, a, b over two sentences: p(a) = 2/3, p(b) = 1/3
    value = alp([["a", "a"], ["b"]])
    assert value == pytest.approx((2 * math.log(2 / 3) + math.log(1 / 3)) / 2)
    assert alp([["x"], ["x"]]) == 0.0  # one piece that is always used: log 1
    assert alp([]) == 0.0


def test_smoothed_sampling_follows_p_to_the_alpha():
    big = Language("big", train=[f"b{i}" for i in range(900)])
    small = Language("small", train=[f"s{i}" for i in range(100)])
    mix = smoothed_sample([big, small], 0.3, seed=0)
    share = sum(s.startswith("s") for s in mix) / len(mix)
    q = 0.1**0.3 / (0.1**0.3 + 0.9**0.3)
    assert share == pytest.approx(q, abs=0.002)  # ~0.34: the small language is upsampled
    assert len(set(mix)) < len(mix)  # upsampling repeats sentences


def test_greedy_allocation_prefers_the_steeper_curve():
    flat = ([10, 20, 40], [-10.0, -9.9, -9.8])
    steep = ([10, 20, 40], [-10.0, -5.0, -4.0])
    assert allocate([flat, steep], [1, 1], 50) == [10, 40]
    assert allocate([flat, steep], [1, 1], 1000) == [40, 40]  # everything fits
    # gains are weighted by the cluster's language count: three languages on the flat curve
    # (3 x 0.1 per 10 pieces) beat one language on a curve twice as flat
    assert allocate([flat, ([10, 20], [-10.0, -9.95])], [3, 1], 40) == [40, 10]
    assert allocate([flat, ([10, 20], [-10.0, -9.95])], [1, 1], 30) == [20, 10]
    assert size_grid(100, 1000, 4) == [100, 215, 464, 1000]


def test_prune_keeps_characters_and_merge_keeps_best_scores():
    text = ["the cat sat on the mat", "a cat and a hat", "that hat is flat"] * 50
    model = unigram.train_unigram(text, 320)
    chars = {p for p, _ in unigram.learned_pieces(model) if len(p) == 1}
    small = unigram.prune(model, len(chars) + 5)
    pieces = dict(unigram.learned_pieces(small))
    assert chars <= set(pieces) and unigram.learned_size(small) == len(chars) + 5
    sp = unigram.processor(small)
    assert sp.decode(sp.encode("the flat cat")) == "the flat cat"
    merged = unigram.with_pieces(model, [("xyz", -1.0), ("xyz", -3.0), ("cat", -2.0)])
    assert dict(unigram.learned_pieces(merged)) == {"xyz": -1.0, "cat": -2.0}
