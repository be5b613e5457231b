"""herd/data/audio_text.py: audio-text rows (transcripts, conversations with input_audio parts,
text alone), the speech tokens each clip is shown as, the padded log-mel collate, and one-line
errors naming row and field."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import soundfile
import torch

import herd
from herd.data.audio import log_mel, read_audio
from herd.data.audio_text import AudioTextBatches, collate, load_audio_text
from herd.data.objectives import IGNORE_INDEX
from herd.errors import HerdError
from herd.model.speech_config import SpeechConfig
from herd.model.speech_model import speech_prompt
from tests.sums_tokenizer import sums_tokenizer

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1000, ffn_dim=48,
    speech=SpeechConfig(n_mels=80, dim=16, n_layers=1, n_heads=2, ffn_dim=32),
)  # fmt: skip
START, END, FRAME = CONFIG.speech_token_ids


def speech_ids(samples: int) -> list[int]:
    return speech_prompt(CONFIG, samples)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return sums_tokenizer(tmp_path_factory.mktemp("audio_text_tok"))


@pytest.fixture
def clips(tmp_path):
    """A 0.5 s clip at 22.05 kHz (espeak-ng's rate) and a 1 s clip at 16 kHz, in tmp_path/wav."""
    (tmp_path / "wav").mkdir()
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "wav" / "a.wav", rng.standard_normal(11025) * 0.1, 22050)
    soundfile.write(tmp_path / "wav" / "b.wav", rng.standard_normal(16000) * 0.1, 16000)
    return tmp_path


def _rows(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_transcript_chat_and_text_rows(tok, clips):
    a = clips / "wav" / "a.wav"
    data_b64 = base64.b64encode((clips / "wav" / "b.wav").read_bytes()).decode()
    rows = [
        {"audio": "wav/a.wav", "text": "What is 3 plus 4?"},
        {"audio": ["wav/a.wav", "wav/b.wav"], "text": "7."},
        {"text": "What is 1 plus 1? 2."},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is "},
                        {"type": "input_audio", "input_audio": {"data": data_b64, "format": "wav"}},
                        {"type": "text", "text": "?"},
                    ],
                },
                {"role": "assistant", "content": "7."},
            ]
        },
    ]
    data = load_audio_text(tok, _rows(clips / "d.jsonl", rows), 256, speech_ids, strict=True)
    one, two, text, chat = data.examples
    samples = len(read_audio(a))  # resampled from 22.05 kHz
    assert one.clips[0].samples == samples == 8000
    ids = tok.encode("What is 3 plus 4?", bos=True, eos=True)
    assert one.ids == speech_ids(samples) + ids
    assert one.mask == [0] * (len(speech_ids(samples)) + 1) + [1] * (len(ids) - 1)
    assert two.ids[: len(speech_ids(8000)) + len(speech_ids(16000))] == (
        speech_ids(8000) + speech_ids(16000)
    )
    assert FRAME not in text.ids and text.clips == []
    # the chat: the clip's speech tokens where its part stands, no loss on them
    plain = tok.encode_dialog(
        [{"role": "user", "content": "X"}, {"role": "assistant", "content": "7."}], False
    )
    user = [*tok.encode("What is "), *speech_ids(16000), *tok.encode("?")]
    at = plain.ids.index(tok.encode("X")[0])
    assert chat.ids == plain.ids[:at] + user + plain.ids[at + 1 :]
    assert chat.mask == plain.mask[:at] + [0] * len(user) + plain.mask[at + 1 :]
    assert isinstance(chat.clips[0].source, bytes)


def test_collate_pads_clips_to_log_mel_frames(tok, clips):
    rows = [
        {"audio": "wav/a.wav", "text": "What is 3 plus 4? 7."},
        {"audio": ["wav/a.wav", "wav/b.wav"], "text": "7."},
        {"text": "What is 1 plus 1? 2."},
    ]
    data = load_audio_text(tok, _rows(clips / "d.jsonl", rows), 256, speech_ids, strict=True)
    batch = collate(data.examples, pad_id=0)
    assert tuple(batch.features.shape) == (3, 2, 100, 80)  # most clips, longest (1 s: 100 frames)
    assert batch.lengths.tolist() == [[50, 0], [50, 100], [0, 0]]
    want = log_mel(read_audio(clips / "wav" / "b.wav"))
    assert torch.equal(batch.features[1, 1], want)
    assert (batch.features[0, 0, 50:] == 0).all()
    assert IGNORE_INDEX not in batch.targets[0, : len(data.examples[0].ids) - 1].tolist()[-3:]
    assert FRAME not in batch.targets.tolist()
    text_only = collate(data.examples[2:])
    assert text_only.features is None and text_only.lengths is None
    streamed = AudioTextBatches(data.examples, 3, seed=1).next_micro_batch()
    assert streamed.features.shape[:2] == (3, 2)


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        ({"audio": "wav/missing.wav", "text": "x"}, ["audio 1", "no such audio file"]),
        ({"audio": "d.jsonl", "text": "x"}, ["audio 1", "not an audio file"]),
        ({"audio": "wav/short.wav", "text": "x"}, ["too short for one speech frame"]),
        ({"audio": "wav/a.wav"}, ["text: expected a non-empty string"]),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "audio", "path": "wav/a.wav"}]}
                ]
            },
            ["messages[0].content[0]", "only user turns"],
        ),
    ],
)
def test_bad_rows_are_one_line_errors(tok, clips, row, fragments):
    soundfile.write(clips / "wav" / "short.wav", np.full(320, 0.1), 16000)  # 20 ms
    path = _rows(clips / "d.jsonl", [row])
    with pytest.raises(HerdError) as err:
        load_audio_text(tok, path, 256, speech_ids, strict=True)
    message = str(err.value)
    assert "\n" not in message and f"{path}:1" in message
    for fragment in fragments:
        assert fragment in message
