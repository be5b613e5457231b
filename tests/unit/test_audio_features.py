"""herd/data/audio.py against independent references: its mel filterbank against transformers'
`mel_filter_bank`, its log-mel features against transformers' `WhisperFeatureExtractor` and the
numpy `audio_utils.spectrogram` with Whisper's parameters; `read_audio` on WAV/FLAC/OGG files
written by soundfile at several rates and channel counts (length, 440 Hz peak, stereo mean, bytes
equal to the path), and the one-line errors for clips that cannot be used."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch
from scipy.signal import chirp
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from herd.data.audio import SAMPLE_RATE, log_mel, mel_filters, read_audio
from herd.errors import HerdError


def _speechlike(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A 100 Hz -> 6 kHz chirp under seeded noise, with a loud middle so the peak is interior."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    envelope = 0.2 + 0.6 * np.exp(-(((t - seconds / 2) / (seconds / 6)) ** 2))
    signal = envelope * chirp(t, f0=100, t1=seconds, f1=6000, method="logarithmic")
    return (signal + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _sine(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / samples.size


def _one_line_naming(error: pytest.ExceptionInfo, name: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    assert name in message, message
    return message


# mel filterbank ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_transformers_slaney_filterbank(n_mels):
    reference = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )  # [frequency bins, mel filters]
    ours = mel_filters(n_mels, 400, 16000)
    assert ours.shape == (n_mels, 201) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference.T, rtol=0, atol=1e-6)
    assert mel_filters(n_mels, 400, 16000) is ours  # cached, so shared and read-only
    assert not ours.flags.writeable


# log-mel features --------------------------------------------------------------------------------


def test_log_mel_equals_numpy_spectrogram_with_whisper_parameters():
    audio = _speechlike()
    # transformers' numpy STFT with Whisper's settings (its feature extractor's numpy path): an
    # implementation independent of torch.stft, on the clip alone, so every frame compares.
    power_mel = spectrogram(
        audio.astype(np.float64),
        window_function(400, "hann"),
        frame_length=400,
        hop_length=160,
        power=2.0,
        center=True,
        pad_mode="reflect",
        mel_filters=mel_filter_bank(201, 80, 0.0, 8000.0, 16000, "slaney", "slaney"),
        log_mel="log10",
    )[:, :-1]
    reference = np.maximum(power_mel, power_mel.max() - 8.0)
    reference = (reference + 4.0) / 4.0

    ours = log_mel(audio)
    assert ours.shape == (audio.size // 160, 80) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference.T, rtol=0, atol=1e-4)


def test_log_mel_equals_whisper_feature_extractor():
    audio = _speechlike()
    frames = audio.size // 160
    extractor = WhisperFeatureExtractor(feature_size=80)
    ours = log_mel(audio).numpy()

    # Unpadded ("longest" of one clip): the extractor's features of exactly this clip.
    alone = extractor(audio, sampling_rate=16000, padding="longest", return_tensors="np")
    np.testing.assert_allclose(ours, alone["input_features"][0].T, rtol=0, atol=1e-4)

    # Whisper's own use pads with zeros to 30 s (3000 frames). The padding frames sit at the log
    # floor, so they do not move the clip's max (the loud middle holds it) and the -8 clip is the
    # same; but the frames whose 400-sample window reaches past the clip's end see zeros where
    # our centred STFT reflects the clip, so only the frames before that compare.
    padded = extractor(audio, sampling_rate=16000, return_tensors="np")["input_features"][0].T
    assert padded.shape == (3000, 80)
    whole = (audio.size - 200) // 160 + 1  # frame i covers samples 160 i - 200 .. 160 i + 199
    assert whole == frames - 1
    np.testing.assert_allclose(ours[:whole], padded[:whole], rtol=0, atol=1e-4)


@pytest.mark.parametrize("samples", [400, 401, 559, 560, 16000, 16159])
def test_log_mel_frames_follow_whispers_convention(samples):
    audio = _speechlike()[:samples]
    from_numpy = log_mel(audio)
    from_tensor = log_mel(torch.from_numpy(audio).double())
    assert from_numpy.shape == (samples // 160, 80)
    torch.testing.assert_close(from_numpy, from_tensor, rtol=0, atol=1e-5)


def test_log_mel_128_bins_equals_whisper_large_v3_extractor():
    audio = _speechlike(1.0)
    extractor = WhisperFeatureExtractor(feature_size=128)  # Whisper large-v3's width
    reference = extractor(audio, sampling_rate=16000, padding="longest", return_tensors="np")
    ours = log_mel(audio, n_mels=128)
    assert ours.shape == (100, 128)
    np.testing.assert_allclose(ours.numpy(), reference["input_features"][0].T, rtol=0, atol=1e-4)


def test_log_mel_too_short_or_not_mono_is_one_line_error():
    with pytest.raises(HerdError) as error:
        log_mel(np.ones(399, dtype=np.float32), name="clip.wav")
    assert "399 samples" in _one_line_naming(error, "clip.wav")
    with pytest.raises(HerdError) as error:
        log_mel(np.ones((2, 16000), dtype=np.float32), name="stereo.wav")
    _one_line_naming(error, "stereo.wav")


# read_audio --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate,channels", [(16000, 1), (44100, 1), (8000, 1), (44100, 2), (8000, 2), (16000, 2)]
)
def test_read_audio_resamples_and_downmixes_a_sine(tmp_path, rate, channels):
    tone = _sine(rate)
    data = np.stack([tone, 0.5 * tone], axis=1) if channels == 2 else tone
    path = tmp_path / f"tone_{rate}_{channels}.wav"
    soundfile.write(path, data, rate)

    samples = read_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size - SAMPLE_RATE) <= 2  # one second at 16 kHz
    assert _dominant_hz(samples) == pytest.approx(440.0, abs=1.0)
    # The mean of 0.5 and 0.25 amplitude channels is 0.375; polyphase resampling keeps amplitude.
    expected_peak = 0.375 if channels == 2 else 0.5
    assert float(np.abs(samples[200:-200]).max()) == pytest.approx(expected_peak, abs=0.01)

    from_bytes = read_audio(path.read_bytes(), name="tone.wav")
    np.testing.assert_array_equal(from_bytes, samples)
    np.testing.assert_array_equal(read_audio(str(path)), samples)


def test_read_audio_stereo_is_the_mean_of_its_channels(tmp_path):
    rng = np.random.default_rng(1)
    left, right = (rng.uniform(-0.5, 0.5, 8000).astype(np.float32) for _ in range(2))
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), (left + right) / 2, rtol=0, atol=1e-7)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_read_audio_reads_other_formats_from_bytes(fmt):
    encoded = io.BytesIO()
    soundfile.write(encoded, _sine(44100), 44100, format=fmt)
    samples = read_audio(encoded.getvalue(), name=f"tone.{fmt.lower()}")
    assert abs(samples.size - SAMPLE_RATE) <= 2
    assert _dominant_hz(samples) == pytest.approx(440.0, abs=1.0)


def test_read_audio_then_log_mel_of_a_file(tmp_path):
    path = tmp_path / "speech.wav"
    soundfile.write(path, _speechlike(2.0), 16000, subtype="FLOAT")
    assert log_mel(read_audio(path)).shape == (200, 80)


# bad input ---------------------------------------------------------------------------------------


def test_missing_file_is_one_line_error(tmp_path):
    path = tmp_path / "absent.wav"
    with pytest.raises(HerdError) as error:
        read_audio(path)
    assert "no such file" in _one_line_naming(error, str(path))


def test_text_renamed_wav_is_one_line_error(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples\nbut a text file with a .wav name\n")
    with pytest.raises(HerdError) as error:
        read_audio(path)
    assert "not a readable audio file" in _one_line_naming(error, str(path))
    with pytest.raises(HerdError) as error:
        read_audio(path.read_bytes(), name="upload 3")
    message = _one_line_naming(error, "upload 3")
    assert "BytesIO" not in message


def test_empty_wav_is_one_line_error(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(HerdError) as error:
        read_audio(path)
    assert "empty" in _one_line_naming(error, str(path))


def test_silent_wav_is_one_line_error(tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros((16000, 2), dtype=np.float32), 16000)
    with pytest.raises(HerdError) as error:
        read_audio(path)
    assert "silent" in _one_line_naming(error, str(path))


def test_unconvertible_rate_is_one_line_error(tmp_path):
    path = tmp_path / "slow.wav"
    soundfile.write(path, _sine(500, hz=50.0), 500)
    with pytest.raises(HerdError) as error:
        read_audio(path)
    message = _one_line_naming(error, str(path))
    assert "500 Hz" in message and "1000" in message and "384000" in message


def test_non_finite_samples_are_one_line_error(tmp_path):
    path = tmp_path / "nan.wav"
    tone = _sine(16000)
    tone[100] = np.nan
    soundfile.write(path, tone, 16000, subtype="FLOAT")
    with pytest.raises(HerdError) as error:
        read_audio(path)
    assert "NaN" in _one_line_naming(error, str(path))
