"""The continuous-batching engine: batch-independent greedy output, reproducible seeded sampling,
chunked prefill, prefix reuse, stop strings, cancellation."""

from __future__ import annotations

import threading

import pytest
import torch

import herd
from herd.serve.engine import Engine, QueueFull, RequestError
from herd.serve.sampling import SamplingParams


class Collector:
    def __init__(self):
        self.deltas = []
        self.done = threading.Event()

    def __call__(self, delta):
        self.deltas.append(delta)
        if delta.finish_reason is not None:
            self.done.set()

    @property
    def ids(self):
        return [t.id for d in self.deltas for t in d.tokens]

    @property
    def text(self):
        return "".join(d.text for d in self.deltas)

    @property
    def finish(self):
        return self.deltas[-1].finish_reason


def run_all(engine, jobs):
    outs = []
    for prompt, params in jobs:
        c = Collector()
        engine.submit(prompt, params, c)
        outs.append(c)
    for c in outs:
        assert c.done.wait(60)
    return outs


@pytest.fixture(scope="module")
def engine(loaded):
    model, tok = loaded
    e = Engine(model, tok, max_batch=4, max_queue=64, prefill_chunk=8).start()
    yield e
    e.shutdown()


def prompts(tok):
    texts = ["The quick brown fox", "SELECT id, name FROM users", "def add(a", "Le cœur a ses"]
    return [tok.encode(t, bos=True) for t in texts]


def test_greedy_matches_generate_alone_whatever_the_batch(engine, loaded):
    model, tok = loaded
    stop = set(tok.stop_ids)
    ps = prompts(tok) * 2  # 8 requests through 4 slots: admissions while others decode
    jobs = [(p, SamplingParams(max_tokens=12 + 3 * i, temperature=0.0)) for i, p in enumerate(ps)]
    # a sampled neighbour in the batch must not change the greedy rows
    jobs.insert(1, (ps[0], SamplingParams(max_tokens=20, temperature=1.0, seed=1)))
    outs = run_all(engine, jobs)
    for (p, params), out in zip(jobs, outs, strict=True):
        if params.temperature:
            continue
        alone = herd.generate(model, p, params.max_tokens, stop_ids=list(stop))
        if stop & set(alone):
            alone = alone[: next(i for i, t in enumerate(alone) if t in stop)]
        assert out.ids == alone


def test_seeded_sampling_reproduces(engine, loaded):
    _, tok = loaded
    p = prompts(tok)[1]
    params = dict(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50)
    a, _, c, d = run_all(
        engine,
        [
            (p, SamplingParams(**params, seed=5)),
            (prompts(tok)[2], SamplingParams(max_tokens=9, temperature=0.7, seed=1)),
            (p, SamplingParams(**params, seed=5)),
            (p, SamplingParams(**params, seed=6)),
        ],
    )
    assert a.ids == c.ids and a.ids != d.ids


def test_prefix_cache_reuses_a_shared_prompt_prefix(engine, loaded):
    model, tok = loaded
    system = tok.encode("You are a helpful assistant. " * 4, bos=True)
    first, second = system + tok.encode("hi"), system + tok.encode("bye")
    before = engine.reused_tokens
    run_all(engine, [(first, SamplingParams(max_tokens=5, temperature=0.0))])
    (b,) = run_all(engine, [(second, SamplingParams(max_tokens=5, temperature=0.0))])
    assert engine.reused_tokens - before >= len(system)
    alone = herd.generate(model, second, 5)
    assert b.ids == alone[: len(b.ids)]


def test_no_prefix_cache_prefills_every_prompt_whole(loaded):
    model, tok = loaded
    e = Engine(model, tok, max_batch=2, prefill_chunk=8, prefix_cache=False).start()
    try:
        system = tok.encode("You are a helpful assistant. " * 4, bos=True)
        first, second = system + tok.encode("hi"), system + tok.encode("bye")
        params = SamplingParams(max_tokens=5, temperature=0.0)
        run_all(e, [(first, params)])
        # one after the other (a finished slot) and side by side (a running donor): no reuse
        (b,) = run_all(e, [(second, params)])
        run_all(e, [(first, params), (second, params)])
        assert e.reused_tokens == 0
        assert b.ids == herd.generate(model, second, 5)[: len(b.ids)]
    finally:
        e.shutdown()


def test_stop_string_across_tokens_and_length(engine, loaded):
    _, tok = loaded
    p = prompts(tok)[0]
    (free,) = run_all(engine, [(p, SamplingParams(max_tokens=30, temperature=0.0))])
    text = free.text
    assert len(text) > 6 and free.finish in ("length", "stop")
    stop = text[3:7]  # most likely spans a token boundary; no partial text may leak
    (cut,) = run_all(engine, [(p, SamplingParams(max_tokens=30, temperature=0.0, stop=[stop]))])
    assert cut.text == text[: text.find(stop)] and cut.finish == "stop"


def test_bad_requests_and_queue_limit(loaded):
    model, tok = loaded
    e = Engine(model, tok, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    with pytest.raises(RequestError, match="maximum context length"):
        e.submit([1] * 1020, SamplingParams(max_tokens=10), print)
    with pytest.raises(RequestError, match="token ids"):
        e.submit([999], SamplingParams(max_tokens=10), print)
    e.submit([1, 2], SamplingParams(max_tokens=3), print)
    with pytest.raises(QueueFull):
        e.submit([1, 2], SamplingParams(max_tokens=3), print)


def test_cancel_frees_the_slot(loaded):
    model, tok = loaded
    e = Engine(model, tok, max_batch=1, max_queue=8).start()
    try:
        long = Collector()
        params = SamplingParams(max_tokens=200, temperature=1.0, top_k=5, seed=0)
        seq = e.submit(prompts(tok)[0], params, long)
        while not long.deltas:  # running and holding the only slot
            threading.Event().wait(0.01)
        e.cancel(seq)
        (short,) = run_all(e, [(prompts(tok)[1], SamplingParams(max_tokens=3, temperature=0.0))])
        assert short.finish in ("length", "stop") and short.deltas[-1].completion_tokens <= 3
        assert not long.done.is_set() and len(seq.generated) < 200 and e.counts() == (0, 0)
    finally:
        e.shutdown()


def test_compiled_decode_step_gives_the_same_greedy_tokens(loaded):
    """--compile: every slot at fixed shapes, idle slots writing to the scratch position."""
    model, tok = loaded
    e = Engine(model, tok, max_batch=3, compile=True).start()
    try:
        ps = prompts(tok)
        outs = run_all(e, [(p, SamplingParams(max_tokens=10, temperature=0.0)) for p in ps])
        stop = set(tok.stop_ids)
        for p, out in zip(ps, outs, strict=True):
            alone = herd.generate(model, p, 10, stop_ids=list(stop))
            assert out.ids == [t for t in alone if t not in stop][: len(out.ids)]
    finally:
        e.shutdown()


def test_penalties_and_logit_bias_follow_openais_formula(engine, loaded):
    """Greedy tokens with presence/frequency penalties and a logit bias equal a step-by-step
    reference: full-sequence logits, less frequency x count and presence x [count > 0] over the
    tokens generated so far, plus the bias, then argmax."""
    model, tok = loaded
    prompt = prompts(tok)[0]
    bias = {int(prompt[-1]): 3.0, 7: -100.0}
    params = SamplingParams(
        max_tokens=16,
        temperature=0.0,
        presence_penalty=0.7,
        frequency_penalty=1.5,
        logit_bias=bias,
    )
    (out,) = run_all(engine, [(prompt, params)])
    stop = set(tok.stop_ids)
    ref: list[int] = []
    with torch.no_grad():
        for _ in range(params.max_tokens):
            logits = model(torch.tensor([prompt + ref]))[0, -1].float()
            for t in set(ref):
                n = ref.count(t)
                logits[t] -= 1.5 * n + 0.7
            for t, b in bias.items():
                logits[t] += b
            nxt = int(logits.argmax())
            if nxt in stop:
                break
            ref.append(nxt)
    assert out.ids[: len(ref)] == ref and 7 not in out.ids
    # without them, the same prompt repeats tokens the penalties rule out
    (plain,) = run_all(engine, [(prompt, SamplingParams(max_tokens=16, temperature=0.0))])
    assert plain.ids != out.ids


def test_logit_bias_of_100_forces_a_token(engine, loaded):
    _, tok = loaded
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, logit_bias={42: 100.0})
    (out,) = run_all(engine, [(prompts(tok)[1], params)])
    assert out.ids == [42] * 6
