"""The continuous-batching engine: requests join and leave the running batch at token boundaries.

One thread owns the model and the KV cache (herd.model.cache.SlotKVCache: a row per slot, each
row at its own position): `run()` on the calling thread, or `start()` on a new one. `herd serve`
runs it on the process's main thread and uvicorn on another, because torch's OpenMP pool runs
small kernels markedly slower when driven from a thread other than the main one (a decode step
1.5-1.7x slower on 2 CPU cores, bench/serve.py's model). Each iteration it
1. drops cancelled requests (their slots are free for the next admission at once),
2. admits waiting requests into free slots, reusing a cached prompt prefix (slots.py),
3. prefills one chunk (at most `prefill_chunk` tokens) of the oldest request still prefilling, so a
   long prompt costs the running streams one chunk of latency per token instead of its whole
   length,
4. runs one decode step over every request that is generating, each with its own sampling
   parameters, stop tokens, stop strings and constraint (sampling.py).
Requests talk to callers through a sink (a callable taking a Delta), called on the engine thread.

Running requests hold the leading rows of the cache, [0, running): admission and release swap
rows to keep it so, and a decode step runs a contiguous range of rows, which attention reads in
place (gathering scattered rows would copy each row's cache every layer). Rows in that range with
nothing to decode (a prompt still prefilling) write to a scratch position and their output is
dropped. Eagerly a step runs the range from the first to the last generating row and reads the
cache up to the longest of them; with `compile`, it runs every slot at fixed shapes, so it is
compiled once (a CUDA graph on CUDA).

Greedy decoding of a request gives the tokens it would alone: every row attends only to its own
row of the cache, at its own positions.

A Llama 3.2 Vision model's requests may bring pictures (`submit(..., images=)`): they run in the
same batch. A picture request's images are encoded at its first prefill chunk into its slot's
row of image keys and values (image_slots.py); a decode step whose rows include one runs the
cross-attention layers over the range (eagerly, also with `compile`), rows without pictures
adding exactly zero there. The prefix cache keys such a prompt's <|image|> positions by the
image's pixels, so KV is shared only between prompts with the same pictures up to that point.

A video model's requests may bring a video too (`submit(..., video=)`, one per request,
video_slots.py): it is encoded at the request's first prefill chunk into its slot's row of video
keys and values, and prefill chunks and decode steps whose rows include one run the video
cross-attention layers beside the image ones (VideoLanguageModel.decode), each row seeing
only its own video from its <|video|> token on, rows without one adding exactly zero. The
prefix cache keys the <|video|> position by the video's frames.

A speech model's requests may bring clips (`submit(..., audio=)`), which the prompt shows as
<|speech|> tokens whose input embeddings are the speech adapter's frames (speech_frames.py): the
frames are encoded once, at the first prefill chunk holding a <|speech|> token, and each chunk
runs the text model on embeddings with its share of them in place. After the prefill such a
request decodes as a text request (compiled with `compile`). The prefix cache keys each
<|speech|> position by its clip's fingerprint, as pictures are keyed.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from herd.errors import HerdError
from herd.model.cache import SlotKVCache, SlotRows
from herd.model.cross_attention import image_visibility
from herd.model.multimodal import Images, prepare_images
from herd.model.speech_model import Audio
from herd.model.transformer import Transformer
from herd.model.video_model import Videos, prepare_videos
from herd.serve.image_slots import ImageSlots, Pictures
from herd.serve.sampling import (
    SamplingParams,
    adjust_logits,
    batch_params,
    sample_rows,
    token_logprobs,
)
from herd.serve.slots import SlotTable
from herd.serve.speech_frames import Clips, chunk_embeds, encode_frames
from herd.serve.video_slots import VideoClip, VideoSlots
from herd.textstream import TextStreamer

log = logging.getLogger("herd.serve")


class RequestError(HerdError):
    """A request the engine cannot take as given (too long, bad token ids): HTTP 400."""


class QueueFull(HerdError):
    """The waiting queue is at its limit: HTTP 429."""


@dataclass
class TokenInfo:
    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Delta:
    """What one step released for one request: new text (stop-string candidates are held back),
    the tokens since the last delta, and on the last delta why it ended and the token counts."""

    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None  # "stop", "length", "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Sequence:
    """One request inside the engine."""

    def __init__(self, prompt: list[int], params: SamplingParams, seed: int, sink, streamer):
        self.prompt = prompt
        # what the prefix cache matches: the prompt, with each <|image|> id replaced by its
        # image's fingerprint when the request brings pictures, its <|video|> id by the video's
        # fingerprint, each <|speech|> id by its clip's and the frame's index when it brings clips
        self.key: list = prompt
        self.images: Images | None = None  # prepared for the model, one batch row
        self.visible: torch.Tensor | None = None  # [prompt length, images]: what each sees
        self.encoded = False  # the images' keys and values are in the slot's row
        self.audio: Audio | None = None  # a speech model's clips, one batch row, while prefilling
        self.frames: torch.Tensor | None = None  # their adapter frames [n, dim], once encoded
        self.video: Videos | None = None  # a video model's clip (one batch row), on the device
        self.video_visible: torch.Tensor | None = None  # [prompt length, 1]: who sees it
        self.video_encoded = False  # the clip's keys and values are in the slot's row
        self.params = params
        self.seed = seed
        self.sink: Callable[[Delta], None] = sink
        self.streamer: TextStreamer = streamer
        self.slot: int | None = None
        self.prefilled = 0  # prompt positions whose KV is written
        self.reused = 0  # of those, taken from the prefix cache
        self.generated: list[int] = []
        self.pending: list[TokenInfo] = []
        self.cancelled = False
        self.done = False
        self.arrival = time.monotonic()
        self.last_token_at: float | None = None


class Engine:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        max_batch: int = 8,
        max_queue: int = 64,
        max_model_len: int | None = None,
        prefill_chunk: int = 256,
        compile: bool = False,
        metrics=None,
        prefix_cache: bool = True,
        max_images: int = 1,
    ) -> None:
        config = model.config
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise HerdError("max_batch and prefill_chunk must be >= 1, max_queue >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.embed.weight.device
        self.vocab_size = config.vocab_size
        # The scratch position (max_model_len) needs a RoPE row of its own.
        limit = config.max_seq_len - 1
        self.max_model_len = min(max_model_len or limit, limit)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics
        self.stop_ids = set(tokenizer.stop_ids)
        dtype = model.embed.weight.dtype
        self.cache = SlotKVCache(config, max_batch, self.max_model_len, self.device, dtype)
        self.slots = SlotTable(max_batch, prefix_cache)
        self.max_images = max_images if config.vision is not None else 0
        self.images = None
        if config.vision is not None and max_images > 0:
            self.images = ImageSlots(model, max_batch, max_images, self.device, dtype)
        self.videos = None
        if config.video is not None:
            self.videos = VideoSlots(model, max_batch, self.device, dtype)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.reused_tokens = 0  # prompt tokens served from the prefix cache, all requests
        self._decode = self._compiled_step() if compile else None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the caller's side (any thread) ----------------------------------------------------------

    def start(self) -> Engine:
        """Run the engine on a new thread."""
        self._thread = threading.Thread(target=self.run, name="herd-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop the engine loop (from any thread); wait for it if `start` launched it."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        sink,
        images: Images | Pictures | None = None,
        audio: Clips | None = None,
        video: VideoClip | None = None,
    ) -> Sequence:
        """Queue a request; its deltas go to `sink`. `images` (a vision model's, one batch row,
        or as `Pictures` with their fingerprints): the pictures its <|image|> ids show. `audio`
        (a speech model's): the clips its <|speech|> ids stand for, in order. `video` (a video
        model's): the clip its <|video|> id shows. Raises
        RequestError or QueueFull."""
        if not prompt:
            raise RequestError("the prompt is empty")
        if audio is not None and (images is not None or video is not None):
            raise RequestError("a request's audio comes without pictures or video")
        if video is not None and self.videos is None:
            raise RequestError("this model takes no video (it has no video adapter)")
        limit = self.vocab_size  # <|image|> is the first id past it; the speech tokens the three
        limit += 1 if images is not None else 3 if audio is not None else 0
        video_id = self.model.config.video_token_id if video is not None else None
        if any(not 0 <= t < limit and t != video_id for t in prompt):
            also = "" if video_id is None else f", or {video_id} (<|video|>)"
            raise RequestError(f"prompt token ids must be in [0, {limit}){also}")
        if params.max_tokens < 1:
            raise RequestError(f"max_tokens is {params.max_tokens}, expected >= 1")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens, but "
                f"{len(prompt) + params.max_tokens} were requested ({len(prompt)} in the prompt, "
                f"{params.max_tokens} to generate)"
            )
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        seq = Sequence(prompt, params, seed, sink, TextStreamer(self.tokenizer, params.stop))
        if images is not None:
            self._attach_images(seq, images)
        if audio is not None:
            self._attach_audio(seq, audio)
        if video is not None:
            self._attach_video(seq, video)
        with self._cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} waiting requests)")
            self.waiting.append(seq)
            self._cond.notify()
        return seq

    def _attach_images(self, seq: Sequence, images: Images | Pictures) -> None:
        pictures = images if isinstance(images, Pictures) else Pictures.of(images)
        images = pictures.images
        if self.images is None:
            raise RequestError("this model takes no images (it has no image encoder)")
        count = images.pixels.shape[1]
        if count > self.max_images:
            raise RequestError(
                f"{count} images in one request; this server takes at most {self.max_images}"
            )
        tokens = torch.tensor([seq.prompt])
        try:
            images = prepare_images(images, tokens, self.model.config)
        except HerdError as e:
            raise RequestError(str(e)) from None
        image_id = self.model.config.image_token_id
        prints = iter(pictures.fingerprints)
        seq.key = [next(prints) if t == image_id else t for t in seq.prompt]
        seq.images = images.to(self.device)
        seq.visible = image_visibility(tokens, image_id, count)[0].to(self.device)

    def _attach_video(self, seq: Sequence, clip: VideoClip) -> None:
        tokens = torch.tensor([seq.prompt])
        try:  # refused here: on the engine thread an error would end every running request
            videos = prepare_videos(clip.videos, tokens, self.model.config)
        except HerdError as e:
            raise RequestError(str(e)) from None
        video_id = self.model.config.video_token_id
        seq.key = [
            clip.fingerprint if t == video_id else k
            for t, k in zip(seq.prompt, seq.key, strict=True)
        ]
        seq.video = videos.to(self.device)
        seq.video_visible = image_visibility(tokens, video_id, 1)[0].to(self.device)

    def _attach_audio(self, seq: Sequence, clips: Clips) -> None:
        config = self.model.config
        if config.speech is None:
            raise RequestError("this model takes no audio (it has no speech encoder)")
        lengths = clips.audio.lengths[0].tolist()
        longest = max(lengths) // config.speech.stack
        if longest > config.speech.max_frames:  # refused here: on the engine thread it would
            raise RequestError(  # end every running request's step
                f"a clip of {longest} 40 ms frames is longer than the speech encoder's "
                f"max_frames {config.speech.max_frames}"
            )
        counts = clips.frame_counts(config)
        frame_id = config.speech_token_ids[2]
        given = seq.prompt.count(frame_id)
        if given != sum(counts):
            raise RequestError(
                f"the prompt has {given} <|speech|> tokens but its clips have {sum(counts)} "
                "speech frames (show each clip with speech_prompt)"
            )
        prints = iter(
            [(*fp, i) for fp, n in zip(clips.fingerprints, counts, strict=True) for i in range(n)]
        )
        seq.key = [next(prints) if t == frame_id else t for t in seq.prompt]
        seq.audio = clips.audio.to(self.device)

    def cancel(self, seq: Sequence) -> None:
        """End a request now (a client went away); its slot is freed at the next token boundary."""
        with self._cond:
            seq.cancelled = True
            self._cond.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        return len(self.running), len(self.waiting)

    def kv_usage(self) -> float:
        """Fraction of the KV cache's positions held by running requests."""
        return self.slots.used_positions() / (self.max_batch * self.max_model_len)

    # -- the engine thread -----------------------------------------------------------------------

    def run(self) -> None:
        """The engine loop, on the calling thread, until `shutdown`."""
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self.waiting or self.running):
                        self._cond.wait()
                    if self._stopping:
                        return
                    self._drop_cancelled()
                    self._admit()
                try:
                    self._step()
                except Exception:  # a failed step ends its requests, not the server
                    log.exception("engine step failed; ending the running requests")
                    for seq in list(self.running):
                        self._emit(seq, "", "error")

    def _drop_cancelled(self) -> None:
        self.waiting = collections.deque(s for s in self.waiting if not s.cancelled)
        for seq in [s for s in self.running if s.cancelled]:
            self._release(seq)

    def _admit(self) -> None:
        while self.waiting and self.slots.free_count():
            seq = self.waiting.popleft()
            place = self.slots.acquire(seq.key)
            row = len(self.running)  # the first row past the running ones
            if place.slot != row:  # a donor is running, so it lies below `row` and stays put
                self._swap_rows(place.slot, row)
            if place.copy_from is not None:
                self.cache.copy_prefix(place.copy_from, row, place.reused)
            seq.slot, seq.prefilled, seq.reused = row, place.reused, place.reused
            self.reused_tokens += place.reused
            self.running.append(seq)

    def _release(self, seq: Sequence) -> None:
        seq.done = True
        last = len(self.running) - 1
        self.running.remove(seq)
        self.slots.release(seq.slot)
        if seq.slot != last:  # the last running row fills the gap; the freed KV stays cached
            moved = next(s for s in self.running if s.slot == last)
            self._swap_rows(seq.slot, last)
            moved.slot = seq.slot

    def _swap_rows(self, a: int, b: int) -> None:
        held = self.slots.slots
        self.cache.swap(a, b, len(held[a].tokens), len(held[b].tokens))
        self.slots.swap(a, b)
        if self.images is not None:
            self.images.swap(a, b)
        if self.videos is not None:
            self.videos.swap(a, b)

    def _step(self) -> None:
        prefilling = [s for s in self.running if s.prefilled < len(s.prompt)]
        decoding = [s for s in self.running if s.prefilled == len(s.prompt) and s.generated]
        if prefilling:
            self._prefill_chunk(prefilling[0])
        if decoding:
            self._decode_step(decoding)

    def _prefill_chunk(self, seq: Sequence) -> None:
        start = seq.prefilled
        end = min(len(seq.prompt), start + self.prefill_chunk)
        chunk = seq.prompt[start:end]
        tokens = torch.tensor([chunk], device=self.device)
        pos = torch.arange(start, end, device=self.device).unsqueeze(0)
        rows = self.cache.rows(seq.slot, seq.slot + 1, length=end)
        last = torch.tensor([end - start - 1], device=self.device)
        if seq.audio is not None:
            logits = self._heard_chunk(seq, start, tokens, pos, rows, last)
        elif seq.images is None and seq.video is None:
            logits = self.model(tokens, pos, rows, last=last)
        else:
            self._encode_media(seq)
            image = None if seq.images is None else seq.visible[start:end].unsqueeze(0)
            video = None if seq.video is None else seq.video_visible[start:end].unsqueeze(0)
            logits = self._seeing(tokens, pos, rows, image, video, last)
        self.slots.wrote(seq.slot, seq.key[start:end])
        seq.prefilled = end
        if end == len(seq.prompt):
            seq.audio = seq.frames = None  # heard: from here on a text request
            self._sample([seq], logits)

    def _encode_media(self, seq: Sequence) -> None:
        """A request's pictures and clip into its slot's rows, once, at its first chunk (prefix
        reuse or not)."""
        if seq.images is not None and not seq.encoded:
            self.images.write(self.model, seq.slot, seq.images)
            seq.encoded = True
        if seq.video is not None and not seq.video_encoded:
            self.videos.write(self.model, seq.slot, seq.video)
            seq.video_encoded = True

    def _seeing(self, tokens, positions, rows, image_visible, video_visible, last=None):
        """The model over the rows [lo, hi) of `rows` (SlotRows) with their pictures
        (`image_visible` [B, T, N], image_slots.py) and clips (`video_visible` [B, T, 1],
        video_slots.py); None where no row has one: those layers would add exact zeros, so
        they are skipped."""
        if video_visible is None:
            return self.images.forward(self.model, tokens, positions, rows, image_visible, last)
        lo, hi = rows.start, rows.stop
        image = None if image_visible is None else self.images.state(lo, hi, image_visible)
        video = self.videos.state(lo, hi, video_visible)
        rope, mask = self.model.rope[positions], rows.mask(positions)
        return self.model.decode(
            tokens, image, rope, positions, rows, mask, last=last, video_state=video
        )

    def _next_visible(
        self, seqs: list[Sequence], lo: int, hi: int, visible_of
    ) -> torch.Tensor | None:
        """[hi - lo, 1, N]: what the next token of each of the rows [lo, hi) sees (what its
        prompt's last token saw, `visible_of(seq)` [prompt length, N]; nothing for rows not in
        `seqs`), or None when `seqs` is empty."""
        if not seqs:
            return None
        n = max(visible_of(s).shape[1] for s in seqs)
        visible = torch.zeros(hi - lo, 1, n, dtype=torch.bool, device=self.device)
        for s in seqs:
            seen = visible_of(s)
            visible[s.slot - lo, 0, : seen.shape[1]] = seen[-1]
        return visible

    def _heard_chunk(self, seq: Sequence, start: int, tokens, pos, rows, last) -> torch.Tensor:
        """The prefill chunk of `tokens` at `start` of a request with clips: the text model on
        the chunk's embeddings, the adapter's frames in place of its <|speech|> rows."""
        frame_id = self.model.config.speech_token_ids[2]
        count = seq.prompt[start : start + tokens.shape[1]].count(frame_id)
        if not count:  # text only (the clips came from the prefix cache, or are still to come)
            return self.model(tokens, pos, rows, last=last)
        if seq.frames is None:  # once, at the first chunk that hears them
            seq.frames = encode_frames(self.model, seq.audio)
        done = seq.prompt[:start].count(frame_id)
        embeds = chunk_embeds(self.model, tokens, seq.frames[done : done + count])
        # Transformer's forward: SpeechLanguageModel's would want the clips (it encodes them)
        return Transformer.forward(self.model, tokens, pos, rows, last=last, embeds=embeds)

    def _decode_step(self, seqs: list[Sequence]) -> None:
        last = [s.generated[-1] for s in seqs]
        pos = [len(s.prompt) + len(s.generated) - 1 for s in seqs]
        pictured = [s for s in seqs if s.images is not None]
        watching = [s for s in seqs if s.video is not None]
        compiled = self._decode is not None and not pictured and not watching
        if compiled:  # every slot, at fixed shapes
            lo, hi = 0, self.max_batch
        else:  # the range of rows from the first generating one to the last
            lo, hi = min(s.slot for s in seqs), max(s.slot for s in seqs) + 1
        # rows in the range not decoding write to the scratch position
        tokens, positions = [0] * (hi - lo), [self.cache.scratch] * (hi - lo)
        for s, t, p in zip(seqs, last, pos, strict=True):
            tokens[s.slot - lo], positions[s.slot - lo] = t, p
        tokens = torch.tensor(tokens, device=self.device).unsqueeze(1)
        positions = torch.tensor(positions, device=self.device).unsqueeze(1)
        if compiled:
            logits = self._decode(self.model, tokens, positions, self._all_rows)
        elif pictured or watching:  # with each row's pictures and clip; other rows see none
            image = self._next_visible(pictured, lo, hi, lambda s: s.visible)
            video = self._next_visible(watching, lo, hi, lambda s: s.video_visible)
            rows = self.cache.rows(lo, hi, length=max(pos) + 1)
            logits = self._seeing(tokens, positions, rows, image, video)[:, -1]
        else:
            rows = self.cache.rows(lo, hi, length=max(pos) + 1)
            logits = self.model(tokens, positions, rows)[:, -1]
        # logits rows are cache rows; `seqs` is in arrival order
        logits = logits[torch.tensor([s.slot - lo for s in seqs], device=self.device)]
        for s, t in zip(seqs, last, strict=True):
            self.slots.wrote(s.slot, [t])
        self._sample(seqs, logits)

    def _compiled_step(self):
        """The fixed-shape decode step over all slots, compiled once (CUDA: as a CUDA graph)."""
        for t in (*self.cache.keys, *self.cache.values):
            torch._dynamo.mark_static_address(t)
        self._all_rows = self.cache.rows()

        def step(model, tokens, positions, rows: SlotRows) -> torch.Tensor:
            return model(tokens, positions, rows)[:, -1]

        mode = "reduce-overhead" if self.device.type == "cuda" else None
        compiled = torch.compile(step, mode=mode, fullgraph=True, dynamic=False)
        # a CUDA-graph replay reuses its output buffer: copy it before the next replay
        return lambda *args: compiled(*args).clone()

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        masked = logits
        adjusted = [i for i, s in enumerate(seqs) if s.params.adjusts_logits()]
        constrained = [i for i, s in enumerate(seqs) if s.params.constraint is not None]
        if adjusted or constrained:
            # a copy: logprobs report the model's own distribution
            masked = logits.to(torch.float32, copy=True)
            for i in adjusted:
                adjust_logits(masked[i], seqs[i].params, seqs[i].generated)
            for i in constrained:
                allowed = seqs[i].params.constraint.allowed(self.vocab_size).to(self.device)
                masked[i] = masked[i].masked_fill(~allowed, float("-inf"))
        rows = [(s.params, s.seed, len(s.generated)) for s in seqs]
        tokens = sample_rows(masked, batch_params(rows, self.device))
        wanted = [s.params.logprobs for s in seqs if s.params.logprobs is not None]
        chosen, top = [None] * len(seqs), [[] for _ in seqs]
        if wanted:
            chosen, top = token_logprobs(logits, tokens, max(wanted))
        now = time.monotonic()
        for seq, t, lp, alts in zip(seqs, tokens.tolist(), chosen, top, strict=True):
            k = seq.params.logprobs
            info = TokenInfo(t, lp if k is not None else None, alts[: k or 0])
            self._append(seq, info, now)

    def _append(self, seq: Sequence, info: TokenInfo, now: float) -> None:
        if self.metrics is not None:
            if seq.last_token_at is None:
                self.metrics.first_token(now - seq.arrival)
            else:
                self.metrics.inter_token(now - seq.last_token_at)
        seq.last_token_at = now
        seq.generated.append(info.id)
        constraint = seq.params.constraint
        if constraint is not None:
            constraint.advance(info.id)
        if info.id in self.stop_ids:  # end of turn: not part of the text
            self._emit(seq, seq.streamer.flush(), "stop")
            return
        seq.pending.append(info)
        text = seq.streamer.push(info.id)
        finish = None
        if seq.streamer.stopped or (constraint is not None and constraint.finished()):
            finish = "stop"
        elif len(seq.generated) >= seq.params.max_tokens:
            finish = "length"
        if finish is not None:
            text += seq.streamer.flush()
            self._emit(seq, text, finish)
        elif text:
            self._emit(seq, text, None)

    def _emit(self, seq: Sequence, text: str, finish: str | None) -> None:
        delta = Delta(text, seq.pending, finish)
        seq.pending = []
        if finish is not None:
            delta.prompt_tokens, delta.completion_tokens = len(seq.prompt), len(seq.generated)
            if self.metrics is not None:
                self.metrics.tokens(len(seq.prompt), len(seq.generated))
            self._release(seq)
        try:
            seq.sink(delta)
        except Exception:  # a caller that went away must not stop the engine
            log.exception("a request's sink failed")
