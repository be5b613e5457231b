"""Autoregressive generation: prefill, fixed-shape decode over a static KV cache, streaming.

Design (after gpt-fast): the cache is sized once per call; the decode step always sees the same
shapes, so on CUDA it is compiled once and replayed as a CUDA graph; positions live on the device
and advance in place; sampling (temperature, top-k, top-p) uses only tensor ops and the
exponential-race trick (argmax of p / E, E ~ Exp(1), is a sample from p) instead of
`torch.multinomial`, so no step waits for the host. Streaming reads token i only after step i+1 has
been queued, so the device never idles while the host prints.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from herd.errors import HerdError
from herd.model.cache import KVCache
from herd.model.transformer import Transformer

if TYPE_CHECKING:
    from herd.model.multimodal import Images
    from herd.model.speech_model import Audio
    from herd.model.video_model import Videos


def sample(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]; greedy when temperature is 0. No host syncs."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p; the top one always stays.
        drop = (torch.cumsum(probs, dim=-1) - probs) > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


def _decode_step(
    model: Transformer, token: torch.Tensor, pos: torch.Tensor, cache: KVCache, greedy: bool
) -> torch.Tensor:
    """One token per row in, the next token (greedy) or the last logits out."""
    logits = model(token.unsqueeze(1), pos, cache)[:, -1]
    return logits.argmax(dim=-1) if greedy else logits


_COMPILED_DECODE: dict[str, object] = {}
_CPU_INDUCTOR_SETTINGS = {
    "freezing": True,
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}


def _compiled_decode(device_type: str):
    """The decode step compiled once per process and device type.

    CUDA: "reduce-overhead" replays the fixed-shape step as a CUDA graph. CPU: inductor with frozen
    weights and max-autotune, whose generated matrix-vector kernels beat MKL's batch-1 gemv by
    1.6-5x per matrix here (2-3x end to end, bench/generate.py); it costs ~20-50 s of compilation,
    so the CPU path compiles only when asked.
    """
    if device_type not in _COMPILED_DECODE:
        if device_type == "cuda":
            fn = torch.compile(_decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:
            compiled = torch.compile(
                _decode_step, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False
            )

            def fn(*args):
                # Inductor-wide settings, scoped to this function's compilation: freeze weights,
                # and keep autotuning's per-matrix timing tables off the user's terminal.
                with (
                    torch._inductor.config.patch(_CPU_INDUCTOR_SETTINGS),
                    warnings.catch_warnings(),
                ):
                    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
                    return compiled(*args)

        _COMPILED_DECODE[device_type] = fn
    return _COMPILED_DECODE[device_type]


def cache_length(needed: int, max_seq_len: int) -> int:
    """KV-cache length for `needed` positions: a power of two (at least 256), at most the context.

    Few distinct lengths means few distinct shapes, so a compiled decode step is reused across calls
    instead of recompiled for every prompt length.
    """
    return min(max(256, 1 << (needed - 1).bit_length()), max_seq_len)


def _as_batch(prompt_ids, device: torch.device) -> torch.Tensor:
    if isinstance(prompt_ids, torch.Tensor):
        ids = prompt_ids.to(device=device, dtype=torch.long)
    else:
        ids = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise HerdError(
            f"prompt must be a non-empty list of token ids, got shape {list(ids.shape)}"
        )
    return ids


@torch.inference_mode()
def stream_generate(
    model: Transformer,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    compile: bool | None = None,
    bidirectional_prefix: int = 0,
    num_samples: int = 1,
    images: Images | None = None,
    audio: Audio | None = None,
    videos: Videos | None = None,
) -> Iterator[list[int]]:
    """Yield one list of new token ids (one per batch row) per step, until done or stopped.

    Rows that emitted a stop id keep producing (shapes stay fixed) but stop when all rows have;
    the stop id itself is yielded so callers can see why a row ended.

    `num_samples` = K > 1 samples K continuations of one prompt as K rows: the prompt is
    prefilled once and its KV copied to every row (Llama 3 section 4.2.2 shares the prompt's KV
    across rejection-sampling samples for the same reason), so K samples cost one prefill.

    `bidirectional_prefix` = n: the prompt's first n tokens attend each other both ways in the
    prefill, as a model trained with bidirectional attention (data.objective nxtpre or mskbi) saw
    its prefix or infilling context; every later token attends causally, as in training.

    `images` (a vision model's `herd.model.multimodal.Images`): the prompt's <|image|> tokens
    show them; they are encoded once, in the prefill, and every decode step reads their cached
    keys and values (eager decode steps unless `compile` is asked for).

    `audio` (a speech model's `herd.model.speech_model.Audio`): the clips the prompt's
    <|speech|> tokens stand for; read once, in the prefill (the decode steps are the text
    model's).

    `videos` (a video model's `herd.model.video_model.Videos`): the clip each row's <|video|>
    token shows; its frames are encoded and aggregated once, in the prefill, and decode steps
    read the video layers' cached keys and values (with `images` too, if the prompt has both).
    """
    config = model.config
    device = model.embed.weight.device
    prompt = _as_batch(prompt_ids, device)
    batch, prompt_len = prompt.shape
    if num_samples < 1 or (num_samples > 1 and batch != 1):
        raise HerdError(
            f"num_samples is {num_samples}: expected 1, or more for a single prompt "
            f"(got {batch} rows)"
        )
    if max_new_tokens < 0:
        raise HerdError(f"max_new_tokens is {max_new_tokens}, expected >= 0")
    total = prompt_len + max_new_tokens
    if total > config.max_seq_len:
        raise HerdError(
            f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"context of {config.max_seq_len} tokens"
        )
    limit = config.vocab_size
    if images is not None:
        if config.vision is None:
            raise HerdError("images were given, but the model has no image encoder")
        if num_samples > 1:
            raise HerdError("num_samples > 1 with images is not supported yet")
        limit += config.vision.extra_tokens  # <|image|> and the other rows past the vocabulary
    if videos is not None:
        if config.video is None:
            raise HerdError("a video was given, but the model has no video adapter")
        if num_samples > 1:
            raise HerdError("num_samples > 1 with a video is not supported yet")
        # <|video|> follows the image rows
        limit = config.vocab_size + config.vision.extra_tokens + config.video.extra_tokens
    if audio is not None:
        if config.speech is None:
            raise HerdError("audio was given, but the model has no speech encoder")
        if num_samples > 1:
            raise HerdError("num_samples > 1 with audio is not supported yet")
        limit += config.speech.extra_tokens  # the speech tokens past the vocabulary
    if int(prompt.max()) >= limit or int(prompt.min()) < 0:
        raise HerdError(f"prompt token ids must be in [0, {limit})")
    if not 0 <= bidirectional_prefix <= prompt_len:
        raise HerdError(
            f"bidirectional_prefix is {bidirectional_prefix}, expected 0 to the prompt's "
            f"{prompt_len} tokens"
        )
    if max_new_tokens == 0:
        return
    if compile is None:
        compile = device.type == "cuda" and images is None and audio is None and videos is None
    decode = _compiled_decode(device.type) if compile else _decode_step
    generator = torch.Generator(device=device).manual_seed(seed)
    # Compiled steps are specialised to the cache length: bucket it. Eager steps are not: size it
    # exactly, so attention reads no padding.
    length = cache_length(total, config.max_seq_len) if compile else total
    rows = batch * num_samples
    cache_type, with_images = KVCache, {}
    if images is not None:
        from herd.model.multimodal import ImageKVCache

        cache_type, with_images = ImageKVCache, {"images": images.to(device)}
    if videos is not None:
        from herd.model.video_model import VideoKVCache

        cache_type = VideoKVCache
        with_images = {**with_images, "videos": videos.to(device)}
    if audio is not None:
        with_images = {"audio": audio.to(device)}
    cache = cache_type(config, rows, length, device, model.embed.weight.dtype)
    if compile:
        for t in (*cache.keys, *cache.values):
            torch._dynamo.mark_static_address(t)
    stop = set(stop_ids)
    done = [False] * rows

    greedy = temperature <= 0.0
    cache.bidirectional = bidirectional_prefix
    # Only the last position's logits: the output layer is the widest (an 8K prompt at a 128K
    # vocabulary would be 4 GiB of float32 logits per row).
    last = torch.full((batch,), prompt_len - 1, device=device)
    prefill = cache.first_row() if num_samples > 1 else cache
    logits = model(
        prompt, torch.arange(prompt_len, device=device), prefill, last=last, **with_images
    )
    if num_samples > 1:
        cache.share_prefix(prompt_len)
        logits = logits.expand(num_samples, -1)
    cache.bidirectional = 0  # decode steps are causal (and a compiled step stays one graph)
    token = sample(logits, temperature, top_k, top_p, generator)
    pos = torch.tensor([prompt_len], device=device)
    for step in range(max_new_tokens):
        nxt = None
        if step + 1 < max_new_tokens:
            # Queue the next step before reading this token back, so the device stays busy.
            out = decode(model, token, pos, cache, greedy)
            # A CUDA-graph replay reuses its output buffer: copy before the next replay.
            nxt = out.clone() if greedy else sample(out, temperature, top_k, top_p, generator)
            pos = pos + 1
        ids = token.tolist()
        yield ids
        done = [d or t in stop for d, t in zip(done, ids, strict=True)]
        if all(done) or nxt is None:
            return
        token = nxt


def generate(
    model: Transformer,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    compile: bool | None = None,
    bidirectional_prefix: int = 0,
    num_samples: int = 1,
    images: Images | None = None,
    audio: Audio | None = None,
    videos: Videos | None = None,
):
    """New token ids after `prompt_ids`.

    A list of ids in gives a list out; a LongTensor [T] gives [N], [B, T] gives [B, N]. Generation
    ends at `max_new_tokens` or when every row has produced one of `stop_ids` (kept in the output);
    in a batch, a row that stopped early is padded with its stop id. `bidirectional_prefix`,
    `num_samples`, `images`, `audio` and `videos`: as in `stream_generate`; with K samples, K lists (or
    [K, N]) come back.
    """
    steps = list(
        stream_generate(
            model,
            prompt_ids,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            stop_ids,
            compile,
            bidirectional_prefix,
            num_samples,
            images,
            audio,
            videos,
        )
    )
    batch = len(steps[0]) if steps else _as_batch(prompt_ids, torch.device("cpu")).shape[0]
    batch = max(batch, num_samples)
    rows: list[list[int]] = [[] for _ in range(batch)]
    stop = set(stop_ids)
    for ids in steps:
        for row, t in zip(rows, ids, strict=True):
            row.append(row[-1] if row and row[-1] in stop else t)
    if not isinstance(prompt_ids, torch.Tensor):
        return rows if num_samples > 1 else rows[0]
    out = torch.tensor(rows, dtype=torch.long).reshape(batch, len(steps))
    return out[0] if prompt_ids.dim() == 1 and num_samples == 1 else out


@torch.inference_mode()
def generate_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    num_samples: int = 1,
    generators: Sequence[torch.Generator] | None = None,
) -> list[list[int]]:
    """New token ids for prompts of different lengths, `num_samples` rows each, decoded as one
    batch: len(prompts) x num_samples lists, prompt-major, each ending at its first stop id
    (kept) or after `max_new_tokens`.

    The cache is a SlotKVCache, a row per sample with its own positions, so prompts need no
    padding. Each prompt is prefilled once, into its first row, and its KV copied to its other
    rows (as `num_samples` does in `stream_generate`); then every row decodes together. Rows
    that have stopped keep decoding until all have (fixed shapes), their tokens dropped.
    Sampling draws one batch of noise per step from a generator seeded with `seed`, so a row's
    tokens depend on the batch it is in (greedy rows do not: each equals `generate` on its prompt
    alone). With `generators`, one per row, each row samples from its own and draws from it only
    while it runs: what a prompt gets, and where its generator is left, do not depend on the rows
    beside it (GAtt samples a dialogue's turns from one generator, whatever the batch).
    """
    from herd.model.cache import SlotKVCache

    config = model.config
    device = model.embed.weight.device
    if not prompts or any(len(p) == 0 for p in prompts):
        raise HerdError("prompts must be a non-empty list of non-empty token id lists")
    if num_samples < 1 or max_new_tokens < 1:
        raise HerdError(
            f"num_samples {num_samples} and max_new_tokens {max_new_tokens}: expected >= 1"
        )
    longest = max(len(p) for p in prompts) + max_new_tokens
    if longest >= config.max_seq_len:  # the cache's extra scratch position needs a RoPE row too
        raise HerdError(
            f"the longest prompt + {max_new_tokens} new tokens needs {longest} positions; the "
            f"model's context is {config.max_seq_len} (one is kept as scratch)"
        )
    if any(min(p) < 0 or max(p) >= config.vocab_size for p in prompts):
        raise HerdError(f"prompt token ids must be in [0, {config.vocab_size})")
    k, rows = num_samples, len(prompts) * num_samples
    if generators is not None and len(generators) != rows:
        raise HerdError(f"{len(generators)} generators for {rows} rows (one per prompt and sample)")
    cache = SlotKVCache(config, rows, longest, device, model.embed.weight.dtype)
    firsts = []
    for i, prompt in enumerate(prompts):
        n = len(prompt)
        row = i * k
        view = cache.rows(row, row + 1, length=n)
        ids = torch.tensor([list(prompt)], device=device)
        pos = torch.arange(n, device=device).unsqueeze(0)
        firsts.append(model(ids, pos, view, last=torch.tensor([n - 1], device=device)))
        for other in range(row + 1, row + k):
            cache.copy_prefix(row, other, n)
    logits = torch.cat(firsts).repeat_interleave(k, dim=0)
    generator = torch.Generator(device=device).manual_seed(seed)
    positions = torch.tensor([len(p) for p in prompts for _ in range(k)], device=device)
    stop = set(stop_ids)
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    for step in range(max_new_tokens):
        if generators is None:
            token = sample(logits, temperature, top_k, top_p, generator)
        else:  # a row that has stopped feeds a dummy token and draws nothing
            token = torch.cat([
                logits.new_zeros(1, dtype=torch.long) if done[r]
                else sample(logits[r : r + 1], temperature, top_k, top_p, g)
                for r, g in enumerate(generators)
            ])  # fmt: skip
        for r, t in enumerate(token.tolist()):
            if not done[r]:
                out[r].append(t)
                done[r] = t in stop
        if all(done) or step + 1 == max_new_tokens:
            break
        view = cache.rows(0, rows, length=int(positions.max()) + 1)
        logits = model(token.unsqueeze(1), positions.unsqueeze(1), view)[:, -1]
        positions = positions + 1
    return out
