"""herd/model/video.py: the temporal aggregator (a perceiver resampler) merges every `merge`
consecutive frames into `latents` tokens; it sees the frames of a group as a set of tokens
ordered only by each frame's time embedding, merges groups independently, and ignores the
padding past a clip's real frames."""

from __future__ import annotations

import torch

from herd.model.video import TemporalAggregator

DIM, MERGE, LATENTS, TOKENS = 16, 4, 3, 5


def _aggregator() -> TemporalAggregator:
    torch.manual_seed(0)
    return TemporalAggregator(DIM, MERGE, LATENTS, layers=2, n_heads=2).eval()


def _frames(batch: int, count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, count, TOKENS, DIM, generator=torch.Generator().manual_seed(seed))


def test_output_shape_one_merged_frame_per_group():
    agg = _aggregator()
    with torch.no_grad():
        assert tuple(agg(_frames(2, 8)).shape) == (2, 2, LATENTS, DIM)
        assert tuple(agg(_frames(1, 9)).shape) == (1, 3, LATENTS, DIM)  # a partial last group
        assert tuple(agg(_frames(1, 1)).shape) == (1, 1, LATENTS, DIM)


def test_tokens_are_a_set_frames_are_ordered():
    agg = _aggregator()
    frames = _frames(1, 4)
    with torch.no_grad():
        out = agg(frames)
        shuffled_tokens = agg(frames[:, :, torch.randperm(TOKENS)])  # within every frame
        swapped_frames = agg(frames[:, [1, 0, 2, 3]])  # two frames trade places in time
    torch.testing.assert_close(shuffled_tokens, out, rtol=1e-5, atol=1e-6)
    assert (swapped_frames - out).abs().max() > 1e-3  # the time embeddings tell them apart
    with torch.no_grad():  # without time embeddings the order would be invisible
        agg.time.zero_()
        torch.testing.assert_close(agg(frames[:, [1, 0, 2, 3]]), agg(frames), rtol=1e-5, atol=1e-6)


def test_groups_are_merged_independently_and_padding_is_ignored():
    agg = _aggregator()
    frames = _frames(1, 8)
    with torch.no_grad():
        both = agg(frames)
        first, second = agg(frames[:, :4]), agg(frames[:, 4:])
        torch.testing.assert_close(both[:, 0], first[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(both[:, 1], second[:, 0], rtol=1e-5, atol=1e-6)
        # a 6-frame clip batched beside an 8-frame one: its padding frames do not count
        short = frames[:, :6]
        alone = agg(short)
        padded = torch.cat([short, torch.randn(1, 2, TOKENS, DIM)], dim=1)
        batched = agg(torch.cat([padded, frames]), torch.tensor([6, 8]))
        torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-6)
