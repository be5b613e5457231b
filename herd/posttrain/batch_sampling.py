"""Sampling replies to prompts of different lengths together, each from its own generator.

`herd.generate` takes a batch of prompts of one length (its cache has one position for all rows).
Post-training samples replies to many different prompts (GAtt's dialogues, herd/posttrain/gatt.py):
here each prompt is prefilled alone into its row of a `SlotKVCache` (the serving engine's cache,
a position per row), then all rows decode together, each at its own position. Each row samples
with its own `torch.Generator` and draws from it only for its own tokens, so what a prompt gets
does not depend on the prompts beside it (up to the rounding of batched matrix products).
"""

from __future__ import annotations

import torch

from herd.generation import sample
from herd.model.cache import SlotKVCache


@torch.inference_mode()
def sample_batch(
    model,
    prompts: list[list[int]],
    generators: list[torch.Generator],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: set[int],
) -> list[tuple[list[int], bool]]:
    """(new ids without the stop token, whether a stop token ended it) for each prompt: prompts of
    different lengths prefilled one by one into the rows of one SlotKVCache, then decoded together,
    each row at its own position and sampled with its own generator."""
    device = model.embed.weight.device
    n = len(prompts)
    longest = max(len(p) for p in prompts) + max_new_tokens
    cache = SlotKVCache(model.config, n, longest, device, model.embed.weight.dtype)
    last = []
    for i, p in enumerate(prompts):
        tokens = torch.tensor([p], device=device)
        pos = torch.arange(len(p), device=device).unsqueeze(0)
        end = torch.tensor([len(p) - 1], device=device)
        last.append(model(tokens, pos, cache.rows(i, i + 1, length=len(p)), last=end))
    logits = torch.cat(last)
    positions = [len(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * n
    for step in range(max_new_tokens):
        # A finished row draws nothing more from its generator (it feeds a dummy token), so the
        # draws a dialogue's next turn starts from do not depend on its batch's other rows.
        picked = [
            0 if done[i] else int(sample(logits[i : i + 1], temperature, 0, top_p, g))
            for i, g in enumerate(generators)
        ]
        for i, t in enumerate(picked):
            if not done[i]:
                done[i] = t in stop_ids
                if not done[i]:
                    out[i].append(t)
        if all(done) or step + 1 == max_new_tokens:
            break
        tokens = torch.tensor(picked, device=device).unsqueeze(1)
        pos = torch.tensor(positions, device=device).unsqueeze(1)
        rows = cache.rows(0, n, length=max(positions) + 1)
        logits = model(tokens, pos, rows)[:, -1]
        positions = [p + 1 for p in positions]
    return list(zip(out, done, strict=True))
