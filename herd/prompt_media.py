"""The pictures, clips and videos `herd generate` and `herd chat` show a model (--image,
--audio, --video).

Both are read before the weights (from the checkpoint's config alone), so a text model, a bad file
or a clip too short to hear fails at once. A picture is one <|image|> id in the prompt (Llama 3.2
Vision); a clip is <|speech_start|>, a <|speech|> per 80 ms adapter frame, <|speech_end|> (a
speech model, herd/model/speech_model.py); a video is one <|video|> id (a video model,
herd/model/video_model.py: its frames sampled evenly to video.max_frames). In a plain
prompt they come first, before BOS (as transformers' MllamaProcessor lays out leading images);
in a chat, before the first user turn's text (as a client that sends its media parts first:
each is shown where it stands, herd.tokenizer.chat.encode_pictured_dialog).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from herd.errors import HerdError

if TYPE_CHECKING:
    from herd.model.video_model import Videos


@dataclass
class PromptMedia:
    flag: str  # "--image", "--audio" or "--video", for errors
    inputs: dict  # what generation takes: {"images": Images}, {"audio": Audio}, {"videos": ...}
    shown: list[list[int]]  # the ids that show each picture or clip, in order

    def ids_of(self, index: int) -> list[int]:
        return self.shown[index]

    def before(self, prompt: list[int]) -> list[int]:
        """A plain prompt with every picture or clip before it."""
        return [i for ids in self.shown for i in ids] + prompt

    def first_in_chat(self, messages: list[dict]) -> list[dict]:
        """`messages` with the media before the first user turn's text (as pieces: their
        indices, which `ids_of` turns into ids)."""
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        out = list(messages)
        out[first] = {**out[first], "content": [*range(len(self.shown)), out[first]["content"]]}
        return out

    def check_chat(self, tokenizer) -> None:
        if tokenizer.chat_format != "llama3":
            raise HerdError(
                f"{tokenizer.path}: {self.flag} in a chat needs the Llama 3 chat format, not "
                f"{tokenizer.chat_format}"
            )


def read_media(args: argparse.Namespace) -> PromptMedia | None:
    """The --image pictures, --audio clips or --video clip, read for the checkpoint's model;
    None without."""
    images, clips = getattr(args, "image", []), getattr(args, "audio", [])
    videos = getattr(args, "video", [])
    given = [
        flag for flag, v in (("--image", images), ("--audio", clips), ("--video", videos)) if v
    ]
    if not given:
        return None
    if len(given) > 1:
        raise HerdError(f"{' and '.join(given)} cannot be combined (give one kind of media)")
    from herd.checkpoint.convert import detect_format, read_config

    path = Path(args.checkpoint)
    fmt = detect_format(path)
    config = read_config(path, fmt) if fmt in ("herd", "hf") else None  # only these hold them
    if videos:
        if config is None or config.video is None:
            raise HerdError(f"{path}: a model without a video adapter; --video needs a video model")
        if len(videos) > 1:
            raise HerdError(f"--video given {len(videos)} times; a prompt shows one clip")
        clip = read_video_input(videos[0], config)
        return PromptMedia("--video", {"videos": clip}, [[config.video_token_id]])
    if images:
        if config is None or config.vision is None:
            raise HerdError(
                f"{path}: a text-only model; --image needs a vision model (Llama 3.2 Vision)"
            )
        from herd.model.image_processing import ImageProcessor

        pictures = ImageProcessor(config.vision)([images])
        return PromptMedia("--image", {"images": pictures}, [[config.image_token_id]] * len(images))
    if config is None or config.speech is None:
        raise HerdError(f"{path}: a model without a speech encoder; --audio needs a speech model")
    from herd.data.audio import log_mel, read_audio
    from herd.data.audio_text import pad_clips
    from herd.model.speech_model import Audio, speech_prompt

    features, shown = [], []
    for clip in clips:
        wave = read_audio(clip)
        shown.append(speech_prompt(config, len(wave)))
        features.append(log_mel(wave, config.speech.n_mels, name=str(clip)))
    return PromptMedia("--audio", {"audio": Audio(*pad_clips([features]))}, shown)


def read_video_input(path, config) -> Videos:
    """One clip (a video file or a folder of frames) as `Videos` of one row, its frames sampled
    evenly to the model's `video.max_frames` (herd.data.video.read_frames)."""
    import torch

    from herd.data.video import read_frames
    from herd.model.image_processing import video_frames
    from herd.model.video_model import Videos

    frames = video_frames(read_frames(path, config.video.max_frames), config.vision, str(path))
    return Videos(frames.unsqueeze(0), torch.tensor([len(frames)]))
