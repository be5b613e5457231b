"""Pictures and clips in chat requests: OpenAI `image_url` content parts read into the `Images` a
Llama 3.2 Vision model takes, `input_audio` parts into a speech model's log-mel features, and
`video_url` parts (vLLM's name; one per request) into a video model's frames.

A part is `{"type": "image_url", "image_url": {"url": URL}}` (a bare string URL is taken too).
URL is
  - `data:image/...;base64,...`: always accepted;
  - `file:///abs/path` or a plain path: only when the server was started with
    `--allowed-local-media-path DIR`, and only for files inside DIR once symlinks and `..` are
    resolved (vLLM's option, with the same meaning);
  - `http://` / `https://`: refused. The server makes no outbound requests (it may run where
    nothing else can be reached, and fetching client-named URLs would let any client make it
    reach other hosts); clients send the bytes as a data URL instead.
Anything that cannot be used is a `MediaError` naming the part (`messages[1].content[0]`), which
the API answers with HTTP 400.

A data URL's bytes are read as `herd generate --image` reads a file (read_image: upright by EXIF
orientation, any alpha channel dropped), so a picture sent either way gives the same pixels.
Each picture becomes one <|image|> id where its part stands among the turn's text parts
(herd.tokenizer.chat.encode_pictured_dialog, as transformers' Mllama chat template and vLLM
place them), the encoding image-text training data gets too.

A clip is `{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}}`: the bytes
of an audio file in any format libsndfile reads (WAV, FLAC, OGG, MP3, ...; found from the bytes,
so "format" is not needed), read as `herd generate --audio` reads a file (herd.data.audio:
mono, resampled to 16 kHz, Whisper's log-mel features). It is shown as the speech tokens
`speech_prompt` gives its length, where its part stands, the encoding audio-text training data
gets (herd/data/audio_text.py).

A video is `{"type": "video_url", "video_url": {"url": URL}}` (vLLM's part), URL being a
`data:video/...;base64,...` URL or, under the rule local pictures follow, a local video file or
folder of frames; http(s) is refused as for pictures. Its frames are sampled evenly to the
model's `video.max_frames` (herd.data.video.read_frames, as `herd generate --video` and
video-text training data read a clip) and fitted into one tile each (`video_frames`). It is
shown as one <|video|> id where its part stands, the encoding herd/data/video_text.py gives.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from herd.errors import HerdError

if TYPE_CHECKING:
    import torch

DATA_URL = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),(.*)", re.DOTALL)


class MediaError(HerdError):
    """A picture or clip a request names that cannot be used; `param` is the content part."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def image_url_of(part: dict, param: str) -> str:
    """The URL of an `image_url` content part."""
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise MediaError(param, 'expected "image_url": {"url": "data:image/...;base64,..."}')
    return url


def read_picture(url: str, param: str, local_root: Path | None):
    """The picture `url` names, as an 8-bit RGB PIL image (module doc says which URLs)."""
    from herd.model.image_processing import read_image

    if url.startswith("data:"):
        return _data_picture(url, param)
    send = "the picture's bytes as a data URL (data:image/png;base64,...)"
    scheme = _local_scheme(url, param, "image", send)
    try:
        return read_image(_local_file(url, scheme, param, local_root, "image"))
    except HerdError as e:
        raise MediaError(param, str(e)) from None


def _local_scheme(url: str, param: str, kind: str, send: str) -> str:
    """The scheme of a URL that is not a data URL: "file" or "" (a plain path); http(s) and
    any other scheme are refused (module doc), `send` saying what to send instead."""
    scheme = urlparse(url).scheme.lower() if "://" in url else ""
    if scheme in ("http", "https"):
        raise MediaError(
            param,
            f"{scheme} {kind} URLs are not fetched: this server makes no outbound requests; "
            f"send {send}",
        )
    if scheme not in ("", "file"):
        raise MediaError(param, f"unsupported {kind} URL scheme {scheme!r}; send a data URL")
    return scheme


def _local_file(url: str, scheme: str, param: str, local_root: Path | None, what: str) -> Path:
    """The file (or folder) a `file://` URL or plain path names, allowed only inside the
    server's --allowed-local-media-path folder (module doc)."""
    if local_root is None:
        raise MediaError(
            param,
            f"local {what} files are not allowed on this server (start it with "
            "--allowed-local-media-path DIR to allow files under DIR); send a data URL",
        )
    path = Path(unquote(urlparse(url).path) if scheme == "file" else url)
    resolved = path.resolve()
    if not path.is_absolute() or not resolved.is_relative_to(local_root):
        raise MediaError(
            param,
            f"{path} is not an absolute path inside the allowed folder {local_root}",
        )
    return resolved


def read_video(part: dict, param: str, config, local_root: Path | None):
    """The `Videos` (one row) of a `video_url` part for a video model: a `data:video/...;base64`
    URL, or a local video file or frame folder under the same rule as pictures; frames sampled
    evenly to `video.max_frames` (herd.data.video.read_frames), each one tile."""
    import torch

    from herd.data.video import read_frames
    from herd.model.image_processing import video_frames
    from herd.model.video_model import Videos

    url = part.get("video_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise MediaError(param, 'expected "video_url": {"url": "data:video/mp4;base64,..."}')
    if url.startswith("data:"):
        source, label = _data_bytes(url, param, "video"), param
    else:
        send = "the video's bytes as a data URL (data:video/mp4;base64,...)"
        scheme = _local_scheme(url, param, "video", send)
        source = _local_file(url, scheme, param, local_root, "video")
        label = f"{param}: {source}"
    try:
        frames = read_frames(source, config.video.max_frames, name=label)
        tiles = video_frames(frames, config.vision, param)
    except HerdError as e:  # unreadable, no frames: the message names the part once
        raise MediaError(param, str(e).removeprefix(f"{param}: ")) from None
    return Videos(tiles.unsqueeze(0), torch.tensor([len(tiles)]))


def _data_bytes(url: str, param: str, kind: str) -> bytes:
    """The decoded payload of a base64 data URL whose type is `kind`/... (or unstated)."""
    example, noun = f"data:{kind}/...;base64,...", "an image" if kind == "image" else f"a {kind}"
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise MediaError(param, f"a malformed data URL (expected {example})")
    mime, flags, payload = match.group(1).lower(), match.group(2).lower(), match.group(3)
    if mime and not mime.startswith(f"{kind}/"):
        raise MediaError(param, f"the data URL holds {mime}, not {noun}")
    if ";base64" not in flags:
        raise MediaError(param, f"the data URL is not base64 (expected {example})")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(param, "the data URL's base64 payload does not decode") from None
    if not data:
        raise MediaError(param, "the data URL is empty")
    return data


def _data_picture(url: str, param: str):
    from PIL import Image, ImageOps, UnidentifiedImageError

    from herd.model.image_processing import EIGHT_BIT_MODES

    data = _data_bytes(url, param, "image")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # decode now: a truncated picture fails here
            width, height = opened.size
            if width == 0 or height == 0:
                raise MediaError(param, f"the image has no pixels ({width}x{height})")
            if opened.mode not in EIGHT_BIT_MODES:
                raise MediaError(
                    param, f"pixel mode {opened.mode} (16-bit or floating point); expected 8-bit"
                )
            return ImageOps.exif_transpose(opened).convert("RGB")
    except UnidentifiedImageError:
        raise MediaError(param, "the data URL is not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise MediaError(param, "the image has too many pixels to decode safely") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(param, f"a damaged image ({e})") from None


def read_clip(part: dict, param: str, config) -> tuple[list[int], torch.Tensor]:
    """(the ids that show it in a prompt, its log-mel features [frames, n_mels]) of an
    `input_audio` part's clip, for the speech model of `config` (module doc)."""
    from herd.data.audio import HOP_LENGTH, SAMPLE_RATE, log_mel, read_audio
    from herd.model.speech_model import speech_prompt

    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else None
    if not isinstance(data, str):
        raise MediaError(param, 'expected "input_audio": {"data": BASE64, "format": "wav"}')
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(param, "input_audio data is not valid base64") from None
    speech = config.speech
    try:
        wave = read_audio(raw, param)  # its errors name the part: "messages[0].content[1]: ..."
    except HerdError as e:  # unreadable, empty, silent
        raise MediaError(param, str(e).removeprefix(f"{param}: ")) from None
    # the encoder's rotary table has max_frames positions of `stack` mel frames
    if len(wave) // HOP_LENGTH // speech.stack > speech.max_frames:
        longest = speech.max_frames * speech.stack * HOP_LENGTH
        raise MediaError(
            param,
            f"a clip of {len(wave) / SAMPLE_RATE:.1f} s is longer than this model takes "
            f"({longest / SAMPLE_RATE:.1f} s: speech.max_frames {speech.max_frames})",
        )
    try:
        return speech_prompt(config, len(wave)), log_mel(wave, speech.n_mels, name=param)
    except HerdError as e:  # too short for one speech frame
        raise MediaError(param, str(e)) from None
