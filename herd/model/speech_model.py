"""A language model that hears: herd's text model plus Llama 3's speech encoder and adapter.

`SpeechLanguageModel` is a `Transformer` (the text model keeps its names, so its weights read
as a Llama checkpoint's) that also holds
  - `speech`: the speech encoder and adapter (herd/model/speech.py), log-mel frames -> one
    embedding per 80 ms;
  - `extra_embed`: three rows past the vocabulary, <|speech_start|>, <|speech_end|> and
    <|speech|> (`ModelConfig.speech_token_ids`), not in the output layer.

A prompt shows a clip as <|speech_start|>, one <|speech|> per adapter frame
(`SpeechConfig.frames_for` of the clip's samples), <|speech_end|> (`speech_prompt`); the
adapter's outputs replace the <|speech|> rows of the input embeddings, in order, so they enter
the language model "directly as token representations" (Llama 3 section 8.2) and generation is
the text model's from then on: after the prefill no decode step reads the audio. A target that is
one of the rows past the vocabulary is not counted in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from herd.errors import HerdError
from herd.model.cache import KVCache
from herd.model.config import ModelConfig
from herd.model.masks import PackedAttention
from herd.model.speech import SpeechEncoder, rope_for
from herd.model.transformer import Transformer, embed_with_extra


@dataclass
class Audio:
    """A batch's clips as the speech encoder reads them.

    features: FloatTensor [B, N, frames, n_mels]: N clip slots per row of log-mel frames
        (herd.data.audio.log_mel), right-padded; an empty slot has length 0.
    lengths: LongTensor [B, N]: each clip's real frames. Row b's <|speech|> tokens take its
        clips' adapter frames in order.
    """

    features: torch.Tensor
    lengths: torch.Tensor

    def to(self, device) -> Audio:
        return Audio(self.features.to(device), self.lengths.to(device))


def speech_prompt(config: ModelConfig, samples: int) -> list[int]:
    """The ids that show a clip of `samples` (16 kHz) in a prompt: start, a <|speech|> per
    adapter frame, end. A clip too short for one frame is an error."""
    start, end, frame = config.speech_token_ids
    frames = config.speech.frames_for(samples)
    if frames < 1:
        raise HerdError(
            f"a clip of {samples} samples ({samples / 16000:.3f} s) is too short for one speech "
            "frame"
        )
    return [start, *[frame] * frames, end]


class SpeechLanguageModel(Transformer):
    """tokens [B, T] (+ audio) -> logits [B, T, vocab_size]; a `Transformer` for text alone."""

    def __init__(self, config: ModelConfig) -> None:
        if config.speech is None:
            raise HerdError("a speech model needs config.speech (a speech encoder's shape)")
        super().__init__(config)
        self.extra_embed = nn.Embedding(config.speech.extra_tokens, config.dim)
        self.speech = SpeechEncoder(config.speech, config.dim)

    def init_buffers(self) -> None:
        """The text model's RoPE table and the speech encoder's (max_frames positions)."""
        super().init_buffers()
        c = self.config.speech
        self.speech.rope = rope_for(c, c.max_frames, self.embed.weight.device)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """The text model's initialisation for every matrix and norm gain, every bias 0 (the
        LayerNorms' too)."""
        super().init_weights(seed)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()

    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        packed: PackedAttention | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "sum",
        last: torch.Tensor | None = None,
        hidden: bool = False,
        audio: Audio | None = None,
    ) -> torch.Tensor:
        """`Transformer.forward`, with `audio` for the prompt's <|speech|> tokens. A decode step
        (one token with a cache) needs none: the model never predicts a speech token."""
        frame_id = self.config.speech_token_ids[2]
        if audio is None and (cache is None or tokens.shape[1] > 1):
            count = int((tokens == frame_id).sum())
            if count:
                raise HerdError(
                    f"{count} <|speech|> tokens but no audio was given: a speech frame without "
                    "its clip"
                )
        if packed is not None and audio is not None:
            raise HerdError("packed sequences with audio are not supported yet")
        if targets is not None:
            targets = targets.masked_fill(targets >= self.config.vocab_size, -100)
        embeds = self.embed_tokens(tokens, audio)
        return super().forward(
            tokens, input_pos, cache, packed, targets, reduction, last, hidden, embeds=embeds
        )

    def embed_tokens(self, tokens: torch.Tensor, audio: Audio | None) -> torch.Tensor:
        """Vocabulary rows from `embed`, the speech tokens' from `extra_embed`, and the
        adapter's frames in place of the <|speech|> rows."""
        x = embed_with_extra(self.embed, self.extra_embed, tokens, self.config.vocab_size)
        if audio is None:
            return x
        frames, valid = self.encode_audio(audio)
        slots = tokens == self.config.speech_token_ids[2]
        have, want = valid.sum(dim=1).tolist(), slots.sum(dim=1).tolist()
        for row, (h, w) in enumerate(zip(have, want, strict=True)):
            if h != w:
                raise HerdError(
                    f"row {row}: {w} <|speech|> tokens but its audio has {h} speech frames "
                    "(show each clip with speech_prompt)"
                )
        return x.masked_scatter(slots.unsqueeze(-1), frames[valid].to(x.dtype))

    def encode_audio(self, audio: Audio) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames [B, N * F', dim], valid [B, N * F']): every clip's adapter frames, row by
        row and clip by clip, and which are real."""
        features, lengths = audio.features, audio.lengths.long()
        c = self.config.speech
        if features.dim() != 4 or features.shape[-1] != c.n_mels:
            raise HerdError(
                f"audio: features have shape {list(features.shape)}, expected [batch, clips, "
                f"frames, {c.n_mels}]"
            )
        B, N, frames, _ = features.shape
        if tuple(lengths.shape) != (B, N):
            raise HerdError(f"audio: lengths have shape {list(lengths.shape)}, expected [{B}, {N}]")
        if int(lengths.max()) > frames or int(lengths.min()) < 0:
            raise HerdError(f"audio: lengths must lie in 0..{frames} (the frames given)")
        out, out_lengths = self.speech(features.flatten(0, 1), lengths.flatten())
        steps = out.shape[1]
        valid = torch.arange(steps, device=out.device) < out_lengths.unsqueeze(1)
        return out.reshape(B, N * steps, -1), valid.reshape(B, N * steps)


# The modules a speech model adds to its text model (what an adapter run trains).
ADDED_PARTS = ("speech", "extra_embed")
