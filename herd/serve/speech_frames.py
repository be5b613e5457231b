"""Speech in the continuous batch: a speech model's request's clips, and the input embeddings of
each of its prefill chunks with the clips' adapter frames in place of the <|speech|> rows.

A speech model (herd/model/speech_model.py) hears a clip only through its prompt: the adapter's
outputs replace the <|speech|> rows of the input embeddings, and from then on the request is a
text request (no decode step reads audio, so there is nothing per slot to keep, unlike pictures'
cross-attention keys and values in image_slots.py). The engine prefills a prompt in chunks, so a
request's frames are encoded once, at the first chunk that holds a <|speech|> token (a prompt
whose clips all came from the prefix cache is never encoded), kept until its prefill ends, and
each chunk takes the next frames in order: `chunk_embeds`.

`Clips.of` fingerprints each clip by a hash of the log-mel features the model reads, by which the
prefix cache tells clips apart (as `Pictures` does pictures): the engine keys each <|speech|>
position by its clip's fingerprint and the frame's index in it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from herd.model.speech_model import Audio


@dataclass
class Clips:
    """A request's clips for the engine: the `Audio` the encoder reads (one batch row) and each
    clip's fingerprint (hashed once per request, off the engine thread)."""

    audio: Audio
    fingerprints: list[tuple[str, str]]

    @classmethod
    def of(cls, features: list[torch.Tensor]) -> Clips:
        """The clips whose log-mel frames are `features` ([frames, n_mels] each, in the order
        they stand), padded as `herd generate --audio` pads them."""
        from herd.data.audio_text import pad_clips  # soundfile and scipy: only with audio

        prints = [
            ("<|speech|>", hashlib.sha256(f.contiguous().numpy().tobytes()).hexdigest())
            for f in features
        ]
        return cls(Audio(*pad_clips([features])), prints)

    def frame_counts(self, config) -> list[int]:
        """Each clip's adapter frames: the <|speech|> tokens the prompt must give it."""
        stacked = self.audio.lengths[0] // config.speech.stack
        return [int(n) for n in config.speech.adapter_frames(stacked)]


def encode_frames(model, audio: Audio) -> torch.Tensor:
    """The adapter's frames of one request's clips, [frames, dim], in the order the prompt's
    <|speech|> tokens take them."""
    frames, valid = model.encode_audio(audio)
    return frames[valid]


def chunk_embeds(model, tokens: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Input embeddings of a prefill chunk `tokens` [1, T]: `embed_tokens`' rows, with `frames`
    (exactly one per <|speech|> token in the chunk) in place of the <|speech|> rows, as
    SpeechLanguageModel.embed_tokens places a whole prompt's."""
    x = model.embed_tokens(tokens, None)
    slots = (tokens == model.config.speech_token_ids[2]).unsqueeze(-1)
    return x.masked_scatter(slots, frames.to(x.dtype))
