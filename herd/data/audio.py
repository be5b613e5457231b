"""Audio input for a speech adapter: clips in, 16 kHz mono samples and log-mel features out.

Llama 3 (section 8) feeds its speech encoder 80-dimensional mel-spectrogram features of 16 kHz
audio. This module turns an audio file (WAV, FLAC, OGG: whatever libsndfile reads, by path or as
the file's bytes) into those features, in two steps a caller can use apart:

    read_audio(source)  -> float32 samples, mono, 16 kHz (channels averaged, resampled polyphase)
    log_mel(waveform)   -> float32 tensor [frames, n_mels], frames = samples // 160

`log_mel` is Whisper's recipe (openai/whisper audio.py `log_mel_spectrogram`): a 25 ms periodic
Hann window (n_fft 400), a 10 ms hop (160), a centred reflect-padded STFT whose last frame is
dropped, the power spectrum through a Slaney mel filterbank (Slaney scale and area normalisation,
0 to 8 kHz, as librosa's default), log10 floored at 1e-10, clipped to 8 below the clip's peak,
then (x + 4) / 4. tests/unit/test_audio_features.py checks it against transformers'
`WhisperFeatureExtractor`, its numpy `audio_utils.spectrogram` and `mel_filter_bank`.

Problems are `HerdError`s of one line naming the file (or the name given for bytes): a missing or
unreadable file, an empty or silent clip, a sample rate that cannot be converted, a clip shorter
than one analysis window.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly

from herd.errors import HerdError

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz: one feature frame per hop
MIN_RATE, MAX_RATE = 1_000, 384_000  # what we agree to resample from; outside is a broken header
SILENCE = 1e-6  # a peak below this is digital silence: its features would be the log floor

AudioSource = str | Path | bytes | bytearray

# What soundfile raises for a file it cannot decode: LibsndfileError (a RuntimeError) for a bad
# format, TypeError for a headerless RAW file it would need told the rate of, OSError for I/O.
_READ_ERRORS = (soundfile.LibsndfileError, RuntimeError, TypeError, OSError)
_EXPECTED = "expected an audio file libsndfile reads (WAV, FLAC, OGG, ...)"


def read_audio(source: AudioSource, name: str | None = None) -> np.ndarray:
    """Samples of an audio file as float32 mono at 16 kHz.

    `source` is a path or the bytes of an encoded file; `name` labels bytes in errors (a path
    labels itself). Channels are averaged; other rates are resampled with a polyphase filter at
    the reduced ratio (44.1 kHz -> 16 kHz is up 160, down 441).
    """
    if isinstance(source, bytes | bytearray):
        label = name or "audio bytes"
        file: object = io.BytesIO(bytes(source))
    elif isinstance(source, str | Path):
        label = str(source)
        path = Path(source)
        if not path.exists():
            raise HerdError(f"{label}: no such file; {_EXPECTED}")
        if not path.is_file():
            raise HerdError(f"{label}: is not a file; {_EXPECTED}")
        file = str(path)
    else:
        raise HerdError(
            f"{name or 'audio'}: got a {type(source).__name__}; expected a path or a file's bytes"
        )

    try:
        data, rate = soundfile.read(file, dtype="float32", always_2d=True)
    except _READ_ERRORS as e:
        raise HerdError(f"{label}: not a readable audio file ({_reason(e)}); {_EXPECTED}") from e

    if data.shape[0] == 0:
        raise HerdError(f"{label}: the clip is empty (0 samples); expected some audio")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise HerdError(
            f"{label}: sample rate {rate} Hz cannot be converted to {SAMPLE_RATE} Hz; "
            f"expected {MIN_RATE} to {MAX_RATE} Hz"
        )
    # Float formats can carry NaN or inf; either would poison every feature frame it touches.
    if not np.isfinite(data).all():
        raise HerdError(f"{label}: the clip has NaN or infinite samples; expected finite audio")

    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    # Checked after the downmix because the mix is what the model hears.
    peak = float(np.abs(mono).max())
    if peak < SILENCE:
        raise HerdError(
            f"{label}: the clip is silent (peak amplitude {peak:.3g}, below {SILENCE:g}); "
            "expected audible audio"
        )

    if rate != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, rate)
        mono = resample_poly(mono, SAMPLE_RATE // g, rate // g)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _reason(error: Exception) -> str:
    """soundfile's complaint on one line, without its `Error opening <BytesIO at 0x...>` prefix."""
    text = getattr(error, "error_string", None) or str(error) or type(error).__name__
    return " ".join(str(text).split()).rstrip(".")


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of `_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (np.maximum(mel, min_log_mel) - min_log_mel))
    return np.where(mel >= min_log_mel, log_part, mel * f_sp)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney mel filterbank over 0..sample_rate/2, [n_mels, n_fft // 2 + 1] float32, read-only.

    Triangles with corners at n_mels + 2 points evenly spaced in mel, each scaled by 2 / its width
    in Hz (Slaney's area normalisation), as librosa.filters.mel and Whisper's mel_filters.npz.
    Cached: the result is shared, hence read-only.
    """
    if n_mels < 1 or n_fft < 2 or sample_rate < 1:
        raise HerdError(
            f"mel filters: n_mels {n_mels}, n_fft {n_fft}, sample rate {sample_rate}; "
            "expected n_mels >= 1, n_fft >= 2 and a positive rate"
        )
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    corners = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(corners)
    ramps = corners[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (corners[2:] - corners[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=8)
def _filters_tensor(n_mels: int) -> torch.Tensor:
    # A private copy as a tensor: torch.from_numpy on the read-only cached array would warn.
    return torch.tensor(mel_filters(n_mels, N_FFT, SAMPLE_RATE))


def log_mel(
    waveform: np.ndarray | torch.Tensor, n_mels: int = 80, *, name: str = "audio"
) -> torch.Tensor:
    """Whisper's log-mel features of 16 kHz mono samples: float32 [samples // 160, n_mels].

    Computed on the waveform's device when it is a tensor. `name` labels the clip in errors.
    """
    x = torch.as_tensor(waveform)
    if x.ndim != 1:
        raise HerdError(
            f"{name}: waveform of shape {tuple(x.shape)}; expected 1-D mono samples at "
            f"{SAMPLE_RATE} Hz"
        )
    if x.shape[0] < N_FFT:
        raise HerdError(
            f"{name}: {x.shape[0]} samples is shorter than one {N_FFT}-sample window "
            f"({N_FFT * 1000 // SAMPLE_RATE} ms at {SAMPLE_RATE} Hz); expected at least {N_FFT}"
        )
    x = x.to(torch.float32)
    window = torch.hann_window(N_FFT, device=x.device)
    stft = torch.stft(
        x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    # Whisper drops the last frame: centred framing gives samples // hop + 1 frames, and it keeps
    # samples // hop so that 30 s is exactly 3000 frames.
    power = stft[..., :-1].abs() ** 2
    mel = _filters_tensor(n_mels).to(x.device) @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    # An 80 dB range below the clip's own peak, so quiet stretches do not dominate the scale.
    logs = torch.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).T.contiguous()
