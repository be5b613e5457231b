"""`herd serve` with videos (herd/serve/media.py `read_video`, herd/serve/video_slots.py, the
engine): `video_url` content parts on a tiny random video model, through the `openai` client.
A reply is `herd.generate`'s on the prompt with <|video|> where its part stands (the encoding
video-text training rows get) and the clip's frames; a video request, a picture request and a
text request decoded together each get their own; the prefix cache shares nothing past
<|video|> between different clips; bad videos are HTTP 400 naming the part."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.checkpoint.loading import load_for_command
from herd.data.video import read_frames, write_video
from herd.data.video_text import encode_row
from herd.model.families import build_model
from herd.model.image_processing import ImageProcessor
from herd.model.video_config import VideoConfig
from herd.prompt_media import read_video_input
from herd.serve.engine import Engine
from tests.serve.conftest import Running
from tests.serve.test_images import TOKENS, ask, bad_request, data_url, image_part
from tests.sums_tokenizer import sums_tokenizer
from tests.unit.test_generate_image import VISION

VIDEO = VideoConfig(max_frames=4, merge=2, latents=2, layers=1, n_heads=2, every=1)


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def chat(text: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _clip(path, seed: int):
    """Five frames of a square crossing a background of one colour per clip."""
    frames = []
    for t in range(5):
        frame = np.zeros((28, 28, 3), np.uint8)
        frame[..., seed % 3] = 230
        frame[8:16, 4 * t : 4 * t + 8] = 255 * (seed % 2)
        frames.append(frame)
    return write_video(frames, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(video model folder, two clips, a picture): the vision serve test's tiny model with a video
    adapter, its image cross-attention and the aggregator's attention amplified so that a
    picture and a clip change the greedy reply."""
    from PIL import Image

    root = tmp_path_factory.mktemp("serve_video")
    tok = sums_tokenizer(root)
    config = herd.ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, ffn_dim=64,
        max_seq_len=128, vision=VISION, video=VIDEO,
    )  # fmt: skip
    model = build_model(config, seed=3).eval()  # a seed whose replies differ clip by clip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.uniform_(0.5, 1.5)
            elif name.startswith("cross_layers") and name.split(".")[-2] in ("wv", "wo", "w2"):
                p.mul_(8)
            elif name.startswith("video_aggregator.layers") and name.split(".")[-2] in (
                "wv",
                "wo",
            ):  # the frames, not the learnt queries, dominate the merged tokens
                p.mul_(16)
        model.output.weight.mul_(20)
    folder = save_herd_folder(config, model.state_dict(), root / "video", tokenizer=tok.files())
    clips = [_clip(root / "a.mp4", 0), _clip(root / "b.mp4", 1), _clip(root / "c.mp4", 2)]
    picture = root / "p.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), np.uint8)).save(picture)
    return folder, clips, picture


@pytest.fixture(scope="module")
def video_server(setup, tmp_path_factory):
    folder, clips, picture = setup
    model, tok, _ = load_for_command(folder, device="cpu", tokenizer_needed="to serve")
    server = Running((model, tok), load=False)
    server.engine = Engine(
        model, tok, max_batch=4, prefill_chunk=16, metrics=server.state.metrics, max_images=1
    )
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "a.mp4").write_bytes(clips[0].read_bytes())
    (allowed / "frames").mkdir()  # clip b as a folder of frames
    for i, frame in enumerate(read_frames(clips[1], 5)):
        frame.save(allowed / "frames" / f"frame{i + 1}.png")
    (allowed / "empty").mkdir()
    server.state.local_media = allowed.resolve()
    server.state.set_engine(server.engine.start())
    yield server, model, tok, clips, picture, allowed
    server.stop()


def prompt_for(model, tok, text: str, clip=None, picture=None) -> list[int]:
    """A user turn showing `picture`, then `clip`, then `text`, with the generation prompt."""
    from herd.tokenizer.chat import encode_pictured_dialog

    c = model.config
    pieces = [("image", picture)] * (picture is not None) + [("video", clip)] * (clip is not None)
    messages = [{"role": "user", "content": [*pieces, text]}]

    def ids_of(piece):
        return [c.video_token_id if piece[0] == "video" else c.image_token_id]

    return encode_pictured_dialog(tok, messages, ids_of)[0].ids


def expected(model, tok, text: str, clip=None, picture=None) -> tuple[str, list[int]]:
    """(`herd.generate`'s greedy reply, the prompt) for `prompt_for`'s turn."""
    prompt = prompt_for(model, tok, text, clip, picture)
    videos = read_video_input(clip, model.config) if clip is not None else None
    images = ImageProcessor(model.config.vision)([[picture]]) if picture is not None else None
    new = herd.generate(model, prompt, max_new_tokens=TOKENS, videos=videos, images=images)
    new = new[: next((i for i, t in enumerate(new) if t in tok.stop_ids), len(new))]
    return tok.decode(new, skip_special=True), prompt


def test_video_replies_are_generates(video_server):
    server, model, tok, clips, _, _ = video_server
    want, prompt = expected(model, tok, "What is 3 plus 4?", clips[0])
    # the prompt is what video-text training rows encode for the same turn
    row = {"messages": [
        {"role": "user", "content": [{"type": "video", "path": str(clips[0])},
                                     {"type": "text", "text": "What is 3 plus 4?"}]},
        {"role": "assistant", "content": "7"}]}  # fmt: skip
    trained = encode_row(tok, row, "rows.jsonl:1", model.config.video_token_id).ids
    assert trained[: len(prompt)] == prompt and len(trained) > len(prompt)
    row["messages"][0]["content"][0] = video_part(str(clips[0]))  # the part the server takes
    assert encode_row(tok, row, "rows.jsonl:1", model.config.video_token_id).ids == trained
    # the clip matters: without it the reply is another, and another clip moves the logits
    assert expected(model, tok, "What is 3 plus 4?")[0] != want
    with torch.no_grad():
        ids = torch.tensor([prompt])
        a = model(ids, videos=read_video_input(clips[0], model.config))[0, -1]
        b = model(ids, videos=read_video_input(clips[1], model.config))[0, -1]
    assert (a - b).abs().max() > 0.1
    reply = ask(
        server.client, chat("What is 3 plus 4?", video_part(data_url(clips[0], "video/mp4")))
    )
    assert reply.choices[0].message.content == want
    assert reply.usage.prompt_tokens == len(prompt)
    stream = ask(server.client, chat("What is 3 plus 4?", video_part(data_url(clips[0], "video/mp4"))),
                 stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want


def test_a_batch_mixing_a_video_a_picture_and_text(video_server):
    server, model, tok, clips, picture, _ = video_server
    cases = [("What is 2 plus 2?", clips[1], None), ("What is 2 plus 2?", None, None),
             ("Add them.", None, picture), ("What is 7 plus 1?", clips[0], picture)]  # fmt: skip

    def parts(clip, pic):
        out = [image_part(data_url(pic))] if pic is not None else []
        return out + ([video_part(data_url(clip, "video/mp4"))] if clip is not None else [])

    async def run():
        calls = [server.aclient.chat.completions.create(
            model="tiny", messages=chat(text, *parts(clip, pic)), max_tokens=TOKENS,
            temperature=0) for text, clip, pic in cases]  # fmt: skip
        return await asyncio.gather(*calls)

    engine, shared = server.engine, []
    admit, chunk, seeing = engine._admit, engine.prefill_chunk, engine._seeing

    def admit_together():  # as the image test: all four decode together
        if len(engine.waiting) + len(engine.running) < len(cases):
            engine._cond.wait(0.01)
            return
        admit()

    def spy(tokens, positions, rows, image, video, last=None):
        if tokens.shape[1] == 1 and video is not None:
            shared.append(rows.stop - rows.start)
        return seeing(tokens, positions, rows, image, video, last)

    engine._admit, engine.prefill_chunk, engine._seeing = admit_together, 128, spy
    try:
        replies = asyncio.run(run())
    finally:
        del engine._admit, engine._seeing
        engine.prefill_chunk = chunk
    for (text, clip, pic), reply in zip(cases, replies, strict=True):
        assert reply.choices[0].message.content == expected(model, tok, text, clip, pic)[0]
    assert 4 in shared  # some decode steps ran all four rows together


def test_prefix_cache_never_shares_kv_past_a_different_clip(video_server):
    server, model, tok, clips, _, _ = video_server
    engine, text = server.engine, "What is 5 plus 1?"
    _, prompt = expected(model, tok, text, clips[0])
    reused = []
    for clip in (clips[0], clips[0], clips[2]):  # c: a clip no other test sends
        before = engine.reused_tokens
        reply = ask(server.client, chat(text, video_part(data_url(clip, "video/mp4"))))
        assert reply.choices[0].message.content == expected(model, tok, text, clip)[0]
        reused.append(engine.reused_tokens - before)
    assert reused[1:] == [len(prompt) - 1, prompt.index(model.config.video_token_id)]


def test_local_clips_inside_the_allowed_folder(video_server):
    server, model, tok, clips, _, allowed = video_server
    want = expected(model, tok, "Add.", clips[0])[0]
    for url in (f"file://{allowed / 'a.mp4'}", str(allowed / "a.mp4")):
        assert ask(server.client, chat("Add.", video_part(url))).choices[0].message.content == want
    folder = allowed / "frames"  # a folder of frames, sampled as herd generate --video samples
    reply = ask(server.client, chat("Add.", video_part(f"file://{folder}")))
    assert reply.choices[0].message.content == expected(model, tok, "Add.", folder)[0]


def test_bad_videos_are_400s_naming_the_part(video_server, tmp_path):
    server, _, _, clips, _, allowed = video_server
    client, part = server.client, "messages[0].content[0]"

    def error_for(url: str) -> dict:
        return bad_request(client, chat("Add.", video_part(url)))

    error = error_for("data:video/mp4;base64," + base64.b64encode(b"not a video").decode())
    assert error["param"] == part and "not a video file ffmpeg can read" in error["message"]
    error = error_for("data:image/png;base64," + base64.b64encode(b"x").decode())
    assert error["message"] == f"{part}: the data URL holds image/png, not a video"
    error = error_for("https://example.com/cat.mp4")
    assert "makes no outbound requests" in error["message"]
    error = error_for("data:video/mp4;base64,")
    assert error["message"] == f"{part}: the data URL is empty"
    error = error_for(str(tmp_path / "elsewhere.mp4"))
    assert "not an absolute path inside" in error["message"]
    error = error_for(f"file://{allowed / 'missing.mp4'}")
    assert error["param"] == part and "no such video file" in error["message"]
    error = error_for(str(allowed / "empty"))
    assert error["message"].startswith(f"{part}: {allowed / 'empty'}: a frame folder with no")
    server.state.local_media = None  # a server started without --allowed-local-media-path
    try:
        error = error_for(str(allowed / "a.mp4"))
    finally:
        server.state.local_media = allowed.resolve()
    assert error["message"].startswith(f"{part}: local video files are not allowed")
    two = chat("Add.", video_part(data_url(clips[0], "video/mp4")),
               video_part(data_url(clips[1], "video/mp4")))  # fmt: skip
    error = bad_request(client, two)
    assert error["message"] == "messages[0].content[1]: a request shows one video at most"
    assistant = [*chat("Add."), {"role": "assistant", "content": [video_part(str(clips[0]))]}]
    error = bad_request(client, assistant)
    assert error["message"] == "messages[1].content[0]: videos go in user turns only"
    assert ask(client, chat("Add.")).choices[0].finish_reason in ("stop", "length")


def test_video_to_a_model_without_a_video_adapter(setup, tmp_path):
    folder, clips, _ = setup
    model, tok, _ = load_for_command(folder, device="cpu", tokenizer_needed="to serve")
    vision_only = build_model(model.config.replace(video=None), seed=4)
    server = Running((vision_only, tok))
    try:
        error = bad_request(
            server.client, chat("Add.", video_part(data_url(clips[0], "video/mp4")))
        )
        assert error["message"] == (
            "messages[0].content[0]: the model 'tiny' has no video adapter: it takes no video"
        )
    finally:
        server.stop()
