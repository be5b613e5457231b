"""Generation: KV-cache decoding equals full recomputation; sampling is seeded and sync-free."""

from __future__ import annotations

import pytest
import torch

import herd
from herd.generate import cache_length, sample

CONFIG = herd.ModelConfig(
    dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=97,
    ffn_dim=96,
    max_seq_len=300,
    rope_theta=500000.0,
)


@pytest.fixture(scope="module")
def model():
    m = herd.build_model(CONFIG, seed=3).eval()
    with torch.no_grad():  # sharper distributions than the small init gives, so ties are rare
        m.output.weight.mul_(20)
    return m


def _greedy_by_recompute(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt) :].tolist()


def test_kv_cache_matches_full_recompute(model):
    prompt = [5, 17, 3, 88, 41, 2]
    assert herd.generate(model, prompt, max_new_tokens=40) == _greedy_by_recompute(
        model, prompt, 40
    )


def test_batched_and_tensor_inputs(model):
    prompts = torch.tensor([[5, 17, 3, 88], [9, 9, 1, 0]])
    out = herd.generate(model, prompts, max_new_tokens=12)
    assert out.shape == (2, 12)
    for row, prompt in zip(out, prompts, strict=True):
        assert row.tolist() == _greedy_by_recompute(model, prompt.tolist(), 12)
    assert herd.generate(model, prompts[0], max_new_tokens=3).shape == (3,)


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(model):
    prompt = [1, 2, 3]
    assert herd.generate(model, prompt, 20) == herd.generate(model, prompt, 20)
    a = herd.generate(model, prompt, 30, temperature=1.0, seed=7)
    b = herd.generate(model, prompt, 30, temperature=1.0, seed=7)
    c = herd.generate(model, prompt, 30, temperature=1.0, seed=8)
    assert a == b and a != c


def test_stop_ids_end_generation(model):
    free = herd.generate(model, [4, 4], 20)
    stop = free[5]
    out = herd.generate(model, [4, 4], 20, stop_ids=[stop])
    assert out == free[: free.index(stop) + 1]


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    # top-k 1 and a tiny top-p both reduce to greedy
    for _ in range(20):
        assert sample(logits, 1.0, top_k=1, generator=gen).tolist() == [1, 0]
        assert sample(logits, 1.0, top_p=1e-6, generator=gen).tolist() == [1, 0]
    # top-k 2 never picks outside the two best; frequencies follow the softmax
    draws = torch.stack([sample(logits[:1], 1.0, top_k=2, generator=gen) for _ in range(4000)])
    assert set(draws.flatten().tolist()) <= {1, 2}
    p1 = torch.softmax(torch.tensor([3.0, 2.9]), 0)[0].item()
    assert abs((draws == 1).float().mean().item() - p1) < 0.03


def test_prompt_longer_than_context(model):
    with pytest.raises(herd.HerdError, match="exceeds the model's context of 300"):
        herd.generate(model, list(range(290)), max_new_tokens=20)


def test_cache_length_buckets():
    assert cache_length(10, 4096) == 256
    assert cache_length(257, 4096) == 512
    assert cache_length(3000, 2048) == 2048


def test_compiled_decode_matches_eager(model):
    """The CPU compiled step freezes weights: a second model must not reuse the first's."""
    prompt = [7, 8, 9]
    other = herd.build_model(CONFIG, seed=11).eval()
    with torch.no_grad():
        other.output.weight.mul_(20)
    expected = herd.generate(model, prompt, 8), herd.generate(other, prompt, 8)
    assert expected[0] != expected[1]
    assert herd.generate(model, prompt, 8, compile=True) == expected[0]
    assert herd.generate(other, prompt, 8, compile=True) == expected[1]
    # eager in between must not disturb what the compiled step reads
    assert herd.generate(model, prompt, 8) == expected[0]
    assert herd.generate(model, prompt, 8, compile=True) == expected[0]
