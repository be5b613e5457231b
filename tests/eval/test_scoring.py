"""Shared-prefix and batched scoring equal scoring every full sequence on its own; rolling
windows predict every token exactly once; perplexity equals a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

import herd
from herd.eval.perplexity import perplexity
from herd.eval.scoring import Request, rolling_windows, score_requests, truncate_left
from herd.model.config import ModelConfig


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=61, ffn_dim=64, max_seq_len=40
    )
    return herd.build_model(config, seed=5).eval()


def _reference(model, context, continuation):
    """Sum of log-probabilities of `continuation` after `context`, one full forward pass."""
    ids = torch.as_tensor([context + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).float(), -1)[0]
    rows = logp[len(context) - 1 :]
    target = torch.as_tensor(continuation)
    greedy = bool((rows.argmax(-1) == target).all())
    return float(rows.gather(1, target[:, None]).sum()), greedy


def test_shared_prefix_and_batches_equal_independent_scoring(model):
    gen = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(0, 61, (n,), generator=gen).tolist()

    requests = [
        Request(ids(7), [ids(1), ids(1), ids(1), ids(1)]),  # letters: single-token path
        Request(ids(12), [ids(1), ids(1)]),
        Request(ids(3), [ids(1), ids(1), ids(1)]),
        Request(ids(9), [ids(4), ids(1), ids(6), ids(2)]),  # answers: cached-prefix path
        Request(ids(20), [ids(3), ids(5)]),
    ]
    scored = score_requests(model, requests, batch_size=2)
    for request, scores in zip(requests, scored, strict=True):
        for cont, s in zip(request.continuations, scores, strict=True):
            logprob, greedy = _reference(model, request.context, cont)
            assert s.logprob == pytest.approx(logprob, abs=1e-4)
            assert s.greedy == greedy and s.tokens == len(cont)


def test_greedy_flag_true_for_the_argmax_continuation(model):
    context = [1, 2, 3, 4]
    with torch.no_grad():
        best = int(model(torch.as_tensor([context]))[0, -1].argmax())
    [[s]] = score_requests(model, [Request(context, [[best]])])
    assert s.greedy


def test_requests_that_do_not_fit_are_refused(model):
    with pytest.raises(ValueError, match="does not fit"):
        score_requests(model, [Request(list(range(40)), [[1, 2]])])
    assert truncate_left(list(range(50)), 2, 40) == list(range(11, 50))


@pytest.mark.parametrize("n", [1, 5, 40, 41, 95])
def test_rolling_windows_predict_each_token_once(n):
    tokens = list(range(100, 100 + n))
    predicted = []
    for inputs, targets in rolling_windows(tokens, 7, 40):
        assert len(inputs) == len(targets) <= 40
        seq = [7, *tokens]
        start = seq.index(inputs[0]) if inputs[0] != 7 else 0
        for j, t in enumerate(targets):
            if t != -100:
                assert seq[start + j + 1] == t  # target is the token after the input
                predicted.append(t)
    assert predicted == tokens


def test_perplexity_matches_direct_computation(model, tmp_path):
    class Chars:  # a character tokenizer over the model's 61 ids
        bos_id = 0

        def encode(self, text):
            return [1 + (ord(c) % 60) for c in text]

    text = "short text about herds of llamas " * 3  # 99 characters: three windows of 40
    (tmp_path / "a.txt").write_text(text, "utf-8")
    got = perplexity(model, Chars(), str(tmp_path / "a.txt"), progress=False)
    ids = Chars().encode(text)
    nats = 0.0
    for inputs, targets in rolling_windows(ids, 0, 40):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.as_tensor([inputs])).float(), -1)[0]
        nats -= sum(float(logp[j, t]) for j, t in enumerate(targets) if t != -100)
    assert got["tokens"] == len(ids) and got["bytes"] == len(text.encode())
    assert got["loss"] == pytest.approx(nats / len(ids), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(text.encode()), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))


@pytest.mark.parametrize("ending", ["", " ", "\n", "\t", "\n\n", " \n", "  "])
def test_pairs_split_as_lm_eval_splits_them(ending):
    """`herd eval` and the lm-eval bridge split (context, continuation) with encode_pair; lm-eval's
    own TemplateLM._encode_pair, driven by the same tokenizer, is the reference: all trailing
    whitespace moves to the continuation, not just spaces."""
    from lm_eval.api.model import TemplateLM

    from herd.eval.scoring import encode_pair
    from tests import references

    tok = herd.load_tokenizer(references.llama3_tokenizer())

    class Reference(TemplateLM):
        backend = "causal"
        eot_token_id = tok.eos_id

        def tok_encode(self, string, **kwargs):
            return tok.encode(string, bos=True)

        _loglikelihood_tokens = loglikelihood_rolling = generate_until = None

    context = "Passage: the train leaves at eight.\nQuestion: when?" + ending
    for continuation in (" A", "\nB", "eight", " at eight"):
        ours = encode_pair(tok, context, continuation, bos=True, prefix=tok.bos_id)
        assert ours == Reference._encode_pair(Reference.__new__(Reference), context, continuation)
