"""Video frames for the video adapter: uniform sampling over the clip, folders, and bad input."""

from __future__ import annotations

from itertools import pairwise

import av
import numpy as np
import pytest
from PIL import Image

from herd.data.video import read_frames, sample_indices, write_video
from herd.errors import HerdError

N_FRAMES, WIDTH, HEIGHT, SIDE = 40, 64, 48, 8


def moving_square(n: int = N_FRAMES) -> list[np.ndarray]:
    """Frame i: a white SIDE x SIDE square at x = i on black, so its centre is at i + (SIDE-1)/2."""
    frames = []
    for i in range(n):
        frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        frame[20 : 20 + SIDE, i : i + SIDE] = 255
        frames.append(frame)
    return frames


def square_x(image: Image.Image) -> float:
    """The x centre of the bright pixels (the codec blurs edges, so threshold at half)."""
    gray = np.asarray(image.convert("L")).astype(np.float32)
    _, xs = np.nonzero(gray > 128)
    assert len(xs) > 0, "no white square found in a decoded frame"
    return float(xs.mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(moving_square(), tmp_path_factory.mktemp("video") / "square.mp4")


def assert_one_line_error(call, named: str) -> str:
    with pytest.raises(HerdError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and named in message, message
    return message


def test_sampling_rule_centres_slices_and_covers_short_clips():
    assert sample_indices(40, 8) == [2, 7, 12, 17, 22, 27, 32, 37]
    assert sample_indices(1, 3) == [0, 0, 0]
    many = sample_indices(40, 64)
    assert many == sorted(many) and set(many) == set(range(40))


def test_eight_frames_sampled_uniformly_over_the_clip(clip):
    frames = read_frames(clip, 8)
    assert len(frames) == 8
    assert all(f.mode == "RGB" and f.size == (WIDTH, HEIGHT) for f in frames)
    xs = [square_x(f) for f in frames]
    expected = [i + (SIDE - 1) / 2 for i in sample_indices(N_FRAMES, 8)]
    assert all(b > a for a, b in pairwise(xs)), xs
    assert np.allclose(xs, expected, atol=1.5), (xs, expected)


def test_more_frames_than_the_clip_repeats_frames(clip):
    frames = read_frames(clip, 64)
    assert len(frames) == 64
    xs = [square_x(f) for f in frames]
    assert all(b >= a for a, b in pairwise(xs)), xs
    expected = [i + (SIDE - 1) / 2 for i in sample_indices(N_FRAMES, 64)]
    assert np.allclose(xs, expected, atol=1.5)
    assert xs[0] < 5 and xs[-1] > N_FRAMES - 3  # the whole clip, first frame to last


def test_bytes_give_the_same_frames_as_the_path(clip):
    from_path = read_frames(clip, 8)
    from_bytes = read_frames(clip.read_bytes(), 8, name="upload.mp4")
    for a, b in zip(from_path, from_bytes, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_decoder_count_matches_the_header(clip):
    # Independent of herd: what the mp4 header states, and what PyAV actually decodes.
    with av.open(str(clip)) as container:
        stated = container.streams.video[0].frames
        decoded = sum(1 for _ in container.decode(video=0))
    assert stated == decoded == N_FRAMES


def test_clip_without_a_stated_count_is_counted_by_decoding(clip, tmp_path):
    # Matroska states no frame count (stream.frames == 0), so read_frames counts in a first pass.
    mkv = tmp_path / "square.mkv"
    with av.open(str(mkv), mode="w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for frame in moving_square():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0
    xs = [square_x(f) for f in read_frames(mkv, 8)]
    assert np.allclose(xs, [square_x(f) for f in read_frames(clip, 8)], atol=1.5)


def test_frame_folder_in_natural_order(tmp_path):
    for i in range(1, 13):
        Image.new("RGB", (32, 24), (i * 20, 0, 0)).save(tmp_path / f"frame{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    reds = [np.asarray(f)[0, 0, 0] for f in read_frames(tmp_path, 12)]
    assert reds == [i * 20 for i in range(1, 13)]  # frame1, frame2, ..., not frame1, frame10, ...
    picks = [np.asarray(f)[0, 0, 0] for f in read_frames(tmp_path, 4)]
    assert picks == [(i + 1) * 20 for i in sample_indices(12, 4)]


def test_write_video_needs_even_size(tmp_path):
    odd = [np.zeros((47, 64, 3), np.uint8)]
    message = assert_one_line_error(lambda: write_video(odd, tmp_path / "odd.mp4"), "odd.mp4")
    assert "even" in message


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere.mp4"
    assert_one_line_error(lambda: read_frames(missing, 8), "nowhere.mp4")


def test_text_file_named_like_a_video(tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video\n")
    assert_one_line_error(lambda: read_frames(fake, 8), "clip.mp4")
    assert_one_line_error(lambda: read_frames(b"not a video", 8, name="upload.mp4"), "upload.mp4")


def test_audio_only_file(tmp_path):
    wav = tmp_path / "tone.wav"
    rate = 8000
    tone = (np.sin(2 * np.pi * 440 * np.arange(rate // 4) / rate) * 10000).astype(np.int16)
    with av.open(str(wav), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone[None], format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    message = assert_one_line_error(lambda: read_frames(wav, 8), "tone.wav")
    assert "no video stream" in message


def test_video_stream_without_frames(tmp_path):
    empty = tmp_path / "empty.avi"
    with av.open(str(empty), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()
    message = assert_one_line_error(lambda: read_frames(empty, 8), "empty.avi")
    assert "no decodable frames" in message


def test_empty_folder_and_unreadable_frame(tmp_path):
    empty = tmp_path / "frames"
    empty.mkdir()
    assert_one_line_error(lambda: read_frames(empty, 8), "frames")
    (empty / "frame1.png").write_text("not a png")
    assert_one_line_error(lambda: read_frames(empty, 1), "frame1.png")


def test_count_must_be_positive(clip):
    assert_one_line_error(lambda: read_frames(clip, 0), "square.mp4")
