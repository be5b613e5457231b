"""Generation: KV-cache decoding equals full recomputation; sampling is seeded and sync-free."""

from __future__ import annotations

import pytest
import torch

import herd
from herd.generation import cache_length, sample

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


def test_prefill_computes_only_the_last_positions_logits(model):
    """The output layer (the widest) sees one row per prompt in the prefill, not every position:
    at an 8K prompt and a 128K vocabulary the full logits are 4 GiB of float32 per row."""
    seen = []
    hook = model.output.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        prompts = torch.tensor([[5, 17, 3, 88, 41, 2, 7], [9, 9, 1, 0, 4, 4, 4]])
        out = herd.generate(model, prompts, max_new_tokens=3)
    finally:
        hook.remove()
    assert seen[0] == (2, CONFIG.dim)  # the prefill: [B, dim], not [B, 7, dim]
    for row, prompt in zip(out, prompts, strict=True):
        assert row.tolist() == _greedy_by_recompute(model, prompt.tolist(), 3)


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


def _greedy_by_recompute_bidirectional(model, prompt, n, region):
    """The reference: the whole sequence through the training mask (PackedAttention) every step,
    its first `region` tokens attending both ways."""
    from herd.model.masks import PackedAttention

    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            both = (torch.arange(ids.shape[1]) < region)[None]
            logits = model(ids, packed=PackedAttention(torch.zeros_like(ids), both))
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt) :].tolist()


@pytest.mark.parametrize("region", [1, 4, 6])
def test_bidirectional_prefix_matches_the_training_mask(model, region):
    """A prefill whose first `region` tokens attend both ways (prefix-LM prefix, infilling context)
    decodes what recomputing the whole sequence under the training mask gives, and differs from
    a causal prefill where the region holds more than one token."""
    from herd.model.cache import KVCache
    from herd.model.masks import PackedAttention

    prompt = [5, 17, 3, 88, 41, 2]
    out = herd.generate(model, prompt, max_new_tokens=20, bidirectional_prefix=region)
    assert out == _greedy_by_recompute_bidirectional(model, prompt, 20, region)

    ids = torch.tensor([prompt])
    both = (torch.arange(len(prompt)) < region)[None]
    with torch.no_grad():
        cache = KVCache(CONFIG, 1, 16, "cpu", torch.float32)
        cache.bidirectional = region
        prefill = model(ids, torch.arange(len(prompt)), cache)
        reference = model(ids, packed=PackedAttention(torch.zeros_like(ids), both))
        causal = model(ids)
    torch.testing.assert_close(prefill, reference, atol=1e-5, rtol=1e-5)
    if region > 1:  # the region's tokens see what follows them, so their outputs change
        assert (prefill[0, : region - 1] - causal[0, : region - 1]).abs().max() > 1e-3
    else:  # a one-token region sees only itself either way
        torch.testing.assert_close(prefill, causal, atol=1e-5, rtol=1e-5)


def test_bidirectional_prefix_out_of_range(model):
    with pytest.raises(herd.HerdError, match="bidirectional_prefix is 7"):
        herd.generate(model, [1, 2, 3, 4, 5, 6], 2, bidirectional_prefix=7)


def test_samples_sharing_one_prefill_equal_a_batch_of_copies(model):
    """num_samples=K prefills the prompt once and copies its KV to K rows: the same tokens as a
    batch of K copies of the prompt, each prefilled (the same seed draws the same noise)."""
    prompt = [5, 17, 3, 88, 41, 2, 7, 7, 30]
    seen = []
    hook = model.output.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        shared = herd.generate(model, prompt, 25, temperature=1.0, seed=11, num_samples=6)
    finally:
        hook.remove()
    assert seen[0] == (1, CONFIG.dim)  # one prefill row, not six
    copies = herd.generate(model, torch.tensor([prompt] * 6), 25, temperature=1.0, seed=11)
    assert shared == copies.tolist()
    assert len({tuple(row) for row in shared}) > 1  # K different samples
    greedy = herd.generate(model, prompt, 12, num_samples=3)
    assert greedy == [_greedy_by_recompute(model, prompt, 12)] * 3
    with pytest.raises(herd.HerdError, match="num_samples"):
        herd.generate(model, torch.tensor([prompt, prompt]), 4, num_samples=2)


def test_generate_batch_runs_prompts_of_different_lengths_together(model):
    prompts = [[5, 17, 3], [9, 9, 1, 0, 4, 4, 4, 60, 2], [70]]
    greedy = herd.generation.generate_batch(model, prompts, 15)
    assert greedy == [_greedy_by_recompute(model, p, 15) for p in prompts]
    # with samples: K rows per prompt, prompt-major; greedy rows are K copies
    assert herd.generation.generate_batch(model, prompts, 6, num_samples=2) == [
        row for p in prompts for row in [_greedy_by_recompute(model, p, 6)] * 2
    ]
    sampled = herd.generation.generate_batch(
        model, prompts, 20, temperature=1.0, seed=5, num_samples=4
    )
    assert len(sampled) == 12 and len({tuple(r) for r in sampled[4:8]}) > 1
    assert sampled == herd.generation.generate_batch(
        model, prompts, 20, temperature=1.0, seed=5, num_samples=4
    )
    # a row ends at its first stop id (kept); the others run on
    first = greedy[0][4]
    stopped = herd.generation.generate_batch(model, prompts, 15, stop_ids=[first])
    assert stopped[0] == greedy[0][: greedy[0].index(first) + 1]
    with pytest.raises(herd.HerdError, match="context"):
        herd.generation.generate_batch(model, [[1] * 250], 60)
