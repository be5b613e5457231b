"""The model families one config can describe, in one place: the text model (`Transformer`), the
vision model (herd/model/multimodal.py), the video model (herd/model/video_model.py) and the speech
model (herd/model/speech_model.py). Checkpoint reading, training and conversion ask this module
which class a config builds and which parts it adds to its text model; the family modules
themselves only know the ones they extend.
"""

from __future__ import annotations

import torch

from herd.model.config import ModelConfig
from herd.model.multimodal import ADDED_PARTS as VISION_PARTS
from herd.model.multimodal import VisionLanguageModel
from herd.model.speech_model import ADDED_PARTS as SPEECH_PARTS
from herd.model.speech_model import SpeechLanguageModel
from herd.model.transformer import Transformer
from herd.model.video_model import ADDED_PARTS as VIDEO_PARTS
from herd.model.video_model import VideoLanguageModel


def model_class(config: ModelConfig) -> type[Transformer]:
    """The module a config describes: the text model, with `config.vision` the vision model,
    with `config.video` too the video model (herd/model/video_model.py), with `config.speech`
    the speech model (herd/model/speech_model.py)."""
    if config.speech is not None:
        return SpeechLanguageModel
    if config.video is not None:
        return VideoLanguageModel
    return Transformer if config.vision is None else VisionLanguageModel


def build_model(
    config: ModelConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
) -> Transformer:
    """`herd.build_model`: the model `config` describes (`model_class`), built on the meta
    device, materialised on `device` in `dtype` and initialised (every adapter gate 0)."""
    with torch.device("meta"):
        model = model_class(config)(config)
    model.to_empty(device=device)
    model.to(dtype)
    model.tie_weights()
    model.init_weights(seed)
    return model


def added_parts(config: ModelConfig) -> tuple[str, ...]:
    """The modules a vision, video or speech model adds to its text model, by name (a video
    model's: the vision model's, then its own); () for a text model."""
    if config.video is not None:
        return VISION_PARTS + VIDEO_PARTS
    if config.vision is not None:
        return VISION_PARTS
    if config.speech is not None:
        return SPEECH_PARTS
    return ()
