"""`herd serve` with clips (herd/serve/media.py `read_clip`, herd/serve/speech_frames.py, the
engine): OpenAI `input_audio` content parts on a tiny random speech model, through the `openai`
client. A reply is `herd.generate`'s on the prompt with each clip's speech tokens where its part
stands and `herd generate --audio`'s features (herd/prompt_media.py); the prompt is the encoding
audio-text training data gives the same messages; a clip's frames split across prefill chunks,
beside text requests decoding, give each request its own reply; the prefix cache shares KV only
between prompts with the same clips; bad clips are HTTP 400 naming the part. Clips are sine waves
written with soundfile (WAV, FLAC, OGG, MP3)."""

from __future__ import annotations

import argparse
import asyncio
import base64

import numpy as np
import openai
import pytest
import soundfile
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.checkpoint.loading import load_for_command
from herd.data.audio_text import encode_row
from herd.model.families import build_model
from herd.model.speech_config import SpeechConfig
from herd.model.speech_model import speech_prompt
from herd.prompt_media import read_media
from herd.serve.engine import Engine, RequestError
from herd.serve.sampling import SamplingParams
from herd.serve.speech_frames import Clips
from tests.serve.conftest import Running
from tests.sums_tokenizer import sums_tokenizer

TOKENS = 8
# 80 log-mel features (Whisper's, as herd generate --audio computes them); max_frames 50 stacked
# 40 ms frames: clips of up to 2 s
SPEECH = SpeechConfig(n_mels=80, dim=16, n_layers=1, n_heads=2, ffn_dim=32, max_frames=50)


def sine(path, seconds: float, hz: float, rate: int = 16000, **kw) -> None:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.4 * np.sin(2 * np.pi * hz * t), rate, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(speech folder, text folder, clips by name): a speech model whose adapter's frames are
    amplified (projection x8) and logits sharpened (output x20), so that each clip changes the
    greedy reply."""
    root = tmp_path_factory.mktemp("serve_audio")
    tok = sums_tokenizer(root)
    config = herd.ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, ffn_dim=64,
        max_seq_len=256, speech=SPEECH,
    )  # fmt: skip
    model = build_model(config, seed=5).eval()
    with torch.no_grad():
        model.speech.project.weight.mul_(8)
        model.output.weight.mul_(20)
    speech = save_herd_folder(config, model.state_dict(), root / "speech", tokenizer=tok.files())
    text_config = config.replace(speech=None)
    text = herd.build_model(text_config)
    text = save_herd_folder(text_config, text.state_dict(), root / "text", tok.files())
    clips = {}
    # 1.5 s: 37 stacked frames, 19 <|speech|> tokens, more than a prefill chunk (16)
    for name, seconds, hz, rate in (
        ("low.wav", 1.5, 220, 16000),
        ("high.wav", 1.0, 1800, 22050),  # resampled to 16 kHz
        ("mid.flac", 0.8, 600, 16000),
        ("mid.ogg", 0.8, 900, 44100),
        ("mid.mp3", 0.6, 450, 16000),
    ):
        sine(root / name, seconds, hz, rate)
        clips[name] = root / name
    return speech, text, clips


@pytest.fixture(scope="module")
def speech_server(setup):
    speech, _, clips = setup
    model, tok, _ = load_for_command(speech, device="cpu", tokenizer_needed="to serve")
    server = Running((model, tok), load=False)
    server.engine = Engine(model, tok, max_batch=4, prefill_chunk=16, metrics=server.state.metrics)
    server.state.set_engine(server.engine.start())
    yield server, model, tok, clips
    server.stop()


def audio_part(path) -> dict:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": path.suffix[1:]}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def heard(speech_ckpt, paths) -> tuple[list[list[int]], object]:
    """(the ids showing each clip, the Audio) as `herd generate --audio PATH ...` reads them."""
    media = read_media(argparse.Namespace(checkpoint=str(speech_ckpt), audio=paths, image=[]))
    return media.shown, media.inputs["audio"]


def expected(setup, model, tok, parts: list) -> tuple[str, list[int]]:
    """(`herd.generate`'s greedy reply, the prompt) for one user turn of `parts`: strings, and
    clip paths shown where they stand."""
    paths = [p for p in parts if not isinstance(p, str)]
    body: list[int] = []
    audio = None
    if paths:
        shown, audio = heard(setup[0], paths)
        shown = iter(shown)
    for p in parts:
        body += tok.encode(p) if isinstance(p, str) else next(shown)
    plain = tok.encode_dialog([{"role": "user", "content": "X"}]).ids
    at = plain.index(tok.encode("X")[0])
    prompt = plain[:at] + body + plain[at + 1 :]
    new = herd.generate(model, prompt, max_new_tokens=TOKENS, audio=audio)
    new = new[: next((i for i, t in enumerate(new) if t in tok.stop_ids), len(new))]
    return tok.decode(new, skip_special=True), prompt


def user(parts: list) -> list[dict]:
    content = [text_part(p) if isinstance(p, str) else audio_part(p) for p in parts]
    return [{"role": "user", "content": content}]


def ask(client, messages, **extra):
    return client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=TOKENS, temperature=0, **extra
    )


def test_audio_replies_are_generates(setup, speech_server):
    server, model, tok, clips = speech_server
    parts = ["What is ", clips["low.wav"], "?"]
    want, prompt = expected(setup, model, tok, parts)
    # the clip matters: another clip, or none, gives another reply
    assert want != expected(setup, model, tok, ["What is ", clips["high.wav"], "?"])[0]
    assert want != expected(setup, model, tok, ["What is ?"])[0]

    reply = ask(server.client, user(parts))
    assert reply.choices[0].message.content == want
    assert reply.usage.prompt_tokens == len(prompt)  # the speech tokens count as prompt tokens

    stream = ask(server.client, user(parts), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.prompt_tokens == len(prompt)


def test_the_prompt_is_the_training_encoding(setup, speech_server):
    """Text before, between and after clips in FLAC, OGG and MP3 (and a WAV at 22.05 kHz): the
    server's prompt is herd/data/audio_text.py's encoding of the same messages (up to the
    assistant's reply), and the reply `herd.generate`'s with --audio's features."""
    server, model, tok, clips = speech_server
    engine = server.engine
    prompts = []
    submit = engine.submit

    def record(prompt, *args, **kw):
        prompts.append(prompt)
        return submit(prompt, *args, **kw)

    paths = [clips["mid.flac"], clips["high.wav"], clips["mid.ogg"], clips["mid.mp3"]]
    parts = ["Add ", paths[0], " and ", paths[1], paths[2], "; then ", paths[3], "."]
    engine.submit = record
    try:
        reply = ask(server.client, user(parts))
    finally:
        del engine.submit
    want, prompt = expected(setup, model, tok, parts)
    assert prompts == [prompt]
    assert reply.choices[0].message.content == want

    row = {"messages": [*user(parts), {"role": "assistant", "content": "7."}]}
    training = encode_row(tok, row, "row", lambda n: speech_prompt(model.config, n))
    eot = tok.special_tokens["<|eot_id|>"]
    assert training.ids == prompt + tok.encode("7.") + [eot]
    assert len(training.clips) == 4


def test_a_batch_mixing_audio_and_text(setup, speech_server):
    """Text and audio requests run together: a clip's frames are encoded once and split across
    prefill chunks while other requests decode, and each request gets its own reply."""
    server, model, tok, clips = speech_server
    engine = server.engine
    frame = model.config.speech_token_ids[2]
    cases = [
        ["What is 2 plus 2?"],
        ["What is ", clips["low.wav"], "?"],
        ["What is 7 plus 1?"],
        [clips["mid.flac"], "Add."],
    ]

    async def run():
        calls = [
            server.aclient.chat.completions.create(
                model="tiny", messages=user(parts), max_tokens=TOKENS, temperature=0
            )
            for parts in cases
        ]
        return await asyncio.gather(*calls)

    steps, chunks, encoded = [], [], []  # decode steps (heard or not), heard chunks, encodes

    def decode_spy(seqs):
        steps.append(sorted(frame in s.prompt for s in seqs))
        return decode(seqs)

    def chunk_spy(seq, start, tokens, *args):
        chunks.append((id(seq), int((tokens == frame).sum())))
        return chunk(seq, start, tokens, *args)

    def encode_spy(audio):
        encoded.append(audio.lengths.tolist())
        return encode_audio(audio)

    # Admit nothing until all four wait, so that they share the engine's steps however the
    # HTTP handlers happen to be scheduled.
    admit = engine._admit

    def admit_together():
        if len(engine.waiting) + len(engine.running) < len(cases):
            engine._cond.wait(0.01)
            return
        admit()

    decode, chunk, encode_audio = engine._decode_step, engine._heard_chunk, model.encode_audio
    engine._decode_step, engine._heard_chunk, engine._admit = decode_spy, chunk_spy, admit_together
    model.encode_audio = encode_spy
    try:
        replies = asyncio.run(run())
    finally:
        del engine._decode_step, engine._heard_chunk, engine._admit, model.encode_audio
    for parts, reply in zip(cases, replies, strict=True):
        assert reply.choices[0].message.content == expected(setup, model, tok, parts)[0]
    assert len(encoded) == 2  # each clip once
    # the 1.5 s clip's 19 <|speech|> tokens came in more than one 16-token chunk
    by_request: dict = {}
    for seq, count in chunks:
        by_request.setdefault(seq, []).append(count)
    assert sorted(sum(c > 0 for c in counts) for counts in by_request.values()) == [1, 2]
    # some decode steps ran audio and text requests together
    assert any(True in step and False in step for step in steps), steps


def test_prefix_cache_never_shares_kv_across_different_clips(setup, speech_server):
    server, model, tok, clips = speech_server
    engine = server.engine
    frame = model.config.speech_token_ids[2]
    reused = []
    for name in ("high.wav", "high.wav", "mid.flac"):
        parts = ["What is 5 plus ", clips[name], "?"]
        before = engine.reused_tokens
        reply = ask(server.client, user(parts))
        want, prompt = expected(setup, model, tok, parts)
        assert reply.choices[0].message.content == want
        reused.append(engine.reused_tokens - before)
    # The same clip and text again: all of the prompt but its last token came from the cache.
    # Another clip: only what comes before its first <|speech|> token (<|speech_start|>
    # included).
    _, first = expected(setup, model, tok, ["What is 5 plus ", clips["high.wav"], "?"])
    assert reused[1:] == [len(first) - 1, prompt.index(frame)]


def bad_request(client, messages) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, messages)
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    return error


def test_bad_clips_are_400s_naming_the_part(speech_server, tmp_path):
    server, _, _, clips = speech_server
    client = server.client
    part = "messages[0].content[1]"

    def error_for(bad: dict) -> dict:
        error = bad_request(client, [{"role": "user", "content": [text_part("Add."), bad]}])
        assert error["param"] == part and error["message"].startswith(f"{part}: ")
        return error

    def data(raw: bytes) -> dict:
        return {"type": "input_audio", "input_audio": {"data": base64.b64encode(raw).decode()}}

    error = error_for({"type": "input_audio", "input_audio": {"data": "%%% not base64"}})
    assert error["message"] == f"{part}: input_audio data is not valid base64"
    error = error_for({"type": "input_audio", "input_audio": "abc"})
    assert 'expected "input_audio": {"data"' in error["message"]
    error = error_for(data(b"hello, not audio"))
    assert "not a readable audio file" in error["message"]
    soundfile.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    error = error_for(audio_part(tmp_path / "empty.wav"))
    assert error["message"] == f"{part}: the clip is empty (0 samples); expected some audio"
    soundfile.write(tmp_path / "silent.wav", np.zeros(16000), 16000)
    error = error_for(audio_part(tmp_path / "silent.wav"))
    assert error["message"].startswith(f"{part}: the clip is silent")
    sine(tmp_path / "short.wav", 0.02, 440)
    error = error_for(audio_part(tmp_path / "short.wav"))
    assert "too short for one speech frame" in error["message"]
    sine(tmp_path / "long.wav", 2.5, 440)
    error = error_for(audio_part(tmp_path / "long.wav"))
    assert error["message"] == (
        f"{part}: a clip of 2.5 s is longer than this model takes (2.0 s: speech.max_frames 50)"
    )
    error = error_for({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
    assert error["message"] == f"{part}: the model 'tiny' is a speech model: it takes no images"

    turns = [*user(["Hi."]), {"role": "assistant", "content": [audio_part(clips["low.wav"])]}]
    error = bad_request(client, turns)
    assert error["message"] == "messages[1].content[0]: audio goes in user turns only"
    # the server still answers
    reply = ask(client, user(["Add.", clips["low.wav"]]))
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_audio_to_a_model_without_speech(setup):
    _, text_ckpt, clips = setup
    model, tok, _ = load_for_command(text_ckpt, device="cpu", tokenizer_needed="to serve")
    server = Running((model, tok))
    try:
        error = bad_request(server.client, user(["Add.", clips["low.wav"]]))
        assert error["param"] == "messages[0].content[1]"
        assert error["message"] == (
            "messages[0].content[1]: the model 'tiny' has no speech encoder: it takes no audio"
        )
    finally:
        server.stop()


def test_the_engine_checks_a_prompts_speech_tokens(setup, speech_server):
    """Engine.submit refuses clips whose frames the prompt's <|speech|> tokens do not match,
    before anything runs (a failed engine step would end every running request)."""
    server, _, tok, clips = speech_server
    shown, audio = heard(setup[0], [clips["mid.flac"]])
    clip = Clips.of([audio.features[0, 0, : int(audio.lengths[0, 0])]])
    prompt = tok.encode("Add.", bos=True) + shown[0]
    frames = len(shown[0]) - 2
    with pytest.raises(RequestError) as caught:
        server.engine.submit(
            prompt[:-2] + prompt[-1:], SamplingParams(max_tokens=4), print, audio=clip
        )
    assert str(caught.value) == (
        f"the prompt has {frames - 1} <|speech|> tokens but its clips have {frames} speech "
        "frames (show each clip with speech_prompt)"
    )
