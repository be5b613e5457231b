"""`herd serve` with pictures (herd/serve/media.py, herd/serve/image_slots.py, the engine): OpenAI
`image_url` content parts on a tiny random Llama 3.2 Vision model (tests/unit/test_generate_image.py's
shape and tokenizer), through the `openai` client. A reply is `herd.generate`'s on the prompt with
each <|image|> where its part stands and the processor's Images; requests with and
without pictures share the batch and the prefix cache without changing each other's tokens; bad
pictures are HTTP 400 naming the part."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import openai
import pytest
import torch
from PIL import Image

import herd
from herd.checkpoint.io import save_herd_folder
from herd.checkpoint.loading import load_for_command
from herd.model.families import build_model
from herd.model.image_processing import ImageProcessor
from herd.serve.engine import Engine
from tests.serve.conftest import Running
from tests.sums_tokenizer import sums_tokenizer
from tests.unit.test_generate_image import VISION, _in_user_turn

TOKENS = 8


def data_url(path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def chat(text: str, *urls: str) -> list[dict]:
    return [{"role": "user", "content": [*map(image_part, urls), {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(vision folder, text folder, two picture files): test_generate_image's tiny model, with
    the image path amplified (cross-attention values and outputs x8, gates 0.5-1.5) and sharper
    logits (output x20), so that each picture changes the greedy reply."""
    root = tmp_path_factory.mktemp("serve_images")
    tok = sums_tokenizer(root)
    config = herd.ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, ffn_dim=64,
        max_seq_len=128, vision=VISION,
    )  # fmt: skip
    model = build_model(config, seed=4).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.uniform_(0.5, 1.5)
            elif name.startswith("cross_layers") and name.split(".")[-2] in ("wv", "wo", "w2"):
                p.mul_(8)
        model.output.weight.mul_(20)
    vision = save_herd_folder(config, model.state_dict(), root / "vision", tokenizer=tok.files())
    text_config = config.replace(vision=None)
    text = herd.build_model(text_config)
    text = save_herd_folder(text_config, text.state_dict(), root / "text", tok.files())
    rng = np.random.default_rng(0)
    pictures = []
    for name, size in (("wide.png", (60, 20)), ("small.jpg", (20, 25))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            root / name
        )
        pictures.append(root / name)
    return vision, text, pictures


@pytest.fixture(scope="module")
def vision_server(setup, tmp_path_factory):
    vision, _, pictures = setup
    model, tok, _ = load_for_command(vision, device="cpu", tokenizer_needed="to serve")
    server = Running((model, tok), load=False)
    server.engine = Engine(
        model, tok, max_batch=4, prefill_chunk=16, metrics=server.state.metrics, max_images=2
    )
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "wide.png").write_bytes(pictures[0].read_bytes())
    server.state.local_media = allowed.resolve()
    server.state.set_engine(server.engine.start())
    yield server, model, tok, pictures, allowed
    server.stop()


def expected(model, tok, text: str, pictures) -> tuple[str, int]:
    """(`herd.generate`'s greedy reply, the prompt's length) for a user turn `text` showing
    `pictures` (paths) at the start of its text."""
    image = model.config.image_token_id
    prompt = _in_user_turn(tok, [{"role": "user", "content": text}], len(pictures), image)
    images = ImageProcessor(model.config.vision)([pictures]) if pictures else None
    new = herd.generate(model, prompt, max_new_tokens=TOKENS, images=images)
    new = new[: next((i for i, t in enumerate(new) if t in tok.stop_ids), len(new))]
    return tok.decode(new, skip_special=True), len(prompt)


def ask(client, messages, **extra):
    return client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=TOKENS, temperature=0, **extra
    )


def test_image_replies_are_generates(vision_server):
    server, model, tok, pictures, _ = vision_server
    client = server.client
    text_before = ask(client, chat("What is 3 plus 4?")).choices[0].message.content
    want, prompt_len = expected(model, tok, "What is 3 plus 4?", pictures[:1])
    assert want != expected(model, tok, "What is 3 plus 4?", [])[0]  # the picture matters

    reply = ask(client, chat("What is 3 plus 4?", data_url(pictures[0])))
    assert reply.choices[0].message.content == want
    assert reply.usage.prompt_tokens == prompt_len  # the <|image|> id counts as a prompt token

    # streamed: the same text and usage
    stream = ask(
        client,
        chat("What is 3 plus 4?", data_url(pictures[0])),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.prompt_tokens == prompt_len

    # two pictures (a JPEG among them), both at the start of the turn's text
    two = ask(client, chat("Add.", data_url(pictures[0]), data_url(pictures[1], "image/jpeg")))
    assert two.choices[0].message.content == expected(model, tok, "Add.", pictures)[0]

    # a text request after all that: as before, and herd.generate's
    assert ask(client, chat("What is 3 plus 4?")).choices[0].message.content == text_before
    assert text_before == expected(model, tok, "What is 3 plus 4?", [])[0]


def test_pictures_stand_where_their_parts_do(vision_server):
    """Text before, between and after two pictures: each <|image|> where its part stands, as the
    training data and transformers' Mllama template place them."""
    server, model, tok, pictures, _ = vision_server
    text = [{"type": "text", "text": t} for t in ("What is ", " plus ", "?")]
    parts = [text[0], image_part(data_url(pictures[0])), text[1]]
    parts += [image_part(data_url(pictures[1], "image/jpeg")), text[2]]
    reply = ask(server.client, [{"role": "user", "content": parts}])
    image = model.config.image_token_id
    plain = tok.encode_dialog([{"role": "user", "content": "X"}]).ids
    at = plain.index(tok.encode("X")[0])
    body = [*tok.encode("What is "), image, *tok.encode(" plus "), image, *tok.encode("?")]
    prompt = plain[:at] + body + plain[at + 1 :]
    assert reply.usage.prompt_tokens == len(prompt)
    images = ImageProcessor(model.config.vision)([pictures])
    new = herd.generate(model, prompt, max_new_tokens=TOKENS, images=images)
    new = new[: next((i for i, t in enumerate(new) if t in tok.stop_ids), len(new))]
    assert reply.choices[0].message.content == tok.decode(new, skip_special=True)


def test_prefix_cache_never_shares_kv_across_different_images(vision_server):
    server, model, tok, pictures, _ = vision_server
    engine = server.engine
    text = "What is 5 plus 1?"
    image = model.config.image_token_id
    prompt = _in_user_turn(tok, [{"role": "user", "content": text}], 1, image)
    reused = []
    for picture in (pictures[0], pictures[0], pictures[1]):
        before = engine.reused_tokens
        reply = ask(server.client, chat(text, data_url(picture)))
        assert reply.choices[0].message.content == expected(model, tok, text, [picture])[0]
        reused.append(engine.reused_tokens - before)
    # The same picture and text again: all of the prompt but its last token came from the
    # cache. Another picture: only the text before <|image|>.
    assert reused[1:] == [len(prompt) - 1, prompt.index(image)]


def test_a_batch_mixing_images_and_text(vision_server):
    """Concurrent requests with one, two and no pictures decode together; each gets its own."""
    server, model, tok, pictures, _ = vision_server
    cases = [
        ("What is 2 plus 2?", [pictures[1]]),
        ("What is 2 plus 2?", []),
        ("Add the two.", pictures),
        ("What is 7 plus 1?", [pictures[0]]),
    ]

    async def run():
        calls = [
            server.aclient.chat.completions.create(
                model="tiny",
                messages=chat(text, *map(data_url, pics)),
                max_tokens=TOKENS,
                temperature=0,
            )
            for text, pics in cases
        ]
        return await asyncio.gather(*calls)

    slots = server.engine.images
    steps = []  # per decode step with pictures: how many images each row sees

    def spy(model, tokens, positions, rows, visible, last=None):
        if tokens.shape[1] == 1:
            steps.append(visible[:, 0].sum(dim=1).tolist())
        return forward(model, tokens, positions, rows, visible, last)

    # Admit nothing until all four wait, and prefill each prompt in one step, so that all four
    # share decode steps however the HTTP handlers happen to be scheduled.
    engine = server.engine
    admit, chunk = engine._admit, engine.prefill_chunk

    def admit_together():
        if len(engine.waiting) + len(engine.running) < len(cases):
            engine._cond.wait(0.01)
            return
        admit()

    forward, slots.forward = slots.forward, spy
    engine._admit, engine.prefill_chunk = admit_together, engine.max_model_len
    try:
        replies = asyncio.run(run())
    finally:
        del slots.forward, engine._admit
        engine.prefill_chunk = chunk
    for (text, pics), reply in zip(cases, replies, strict=True):
        assert reply.choices[0].message.content == expected(model, tok, text, pics)[0]
    # some steps decoded a text request beside requests seeing one and two pictures
    assert any(sorted(step) == [0, 1, 1, 2] for step in steps), steps


def test_local_files_inside_the_allowed_folder(vision_server):
    server, model, tok, pictures, allowed = vision_server
    want = expected(model, tok, "Add.", pictures[:1])[0]
    for url in (f"file://{allowed / 'wide.png'}", str(allowed / "wide.png")):
        assert ask(server.client, chat("Add.", url)).choices[0].message.content == want


def bad_request(client, messages) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, messages)
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    return error


def test_bad_pictures_are_400s_naming_the_part(vision_server, tmp_path):
    server, _, _, pictures, allowed = vision_server
    client = server.client
    part = "messages[0].content[1]"
    good = data_url(pictures[0])

    def error_for(url: str) -> dict:
        return bad_request(client, chat("Add.", good, url))

    error = error_for("data:image/png;base64,%%%not base64")
    assert error["param"] == part and "does not decode" in error["message"]
    error = error_for("data:text/plain;base64," + base64.b64encode(b"hello").decode())
    assert error["message"] == f"{part}: the data URL holds text/plain, not an image"
    error = error_for("data:image/png;base64," + base64.b64encode(b"hello").decode())
    assert error["message"] == f"{part}: the data URL is not an image Pillow can read"
    error = error_for("https://example.com/cat.png")
    assert error["param"] == part and "makes no outbound requests" in error["message"]
    outside = tmp_path / "secret.png"
    outside.write_bytes(pictures[0].read_bytes())
    for url in (str(outside), f"file://{allowed}/../{outside.name}", "wide.png"):
        error = error_for(url)
        assert error["param"] == part and "not an absolute path inside" in error["message"]
    error = error_for(f"file://{allowed / 'missing.png'}")
    assert error["message"].endswith("missing.png: no such image file")

    error = bad_request(client, chat("Add.", good, good, good))
    assert error["message"] == "messages: 3 images; this server takes at most 2 per request"
    assistant = [*chat("Add.", good), {"role": "assistant", "content": [image_part(good)]}]
    error = bad_request(client, assistant)
    assert error["message"] == "messages[1].content[0]: images go in user turns only"
    # the server still answers
    assert ask(client, chat("Add.", good)).choices[0].finish_reason in ("stop", "length")


def test_images_to_a_text_model(setup):
    _, text_ckpt, pictures = setup
    model, tok, _ = load_for_command(text_ckpt, device="cpu", tokenizer_needed="to serve")
    server = Running((model, tok))
    try:
        error = bad_request(server.client, chat("Add.", data_url(pictures[0])))
        assert error["param"] == "messages[0].content[0]"
        assert error["message"] == (
            "messages[0].content[0]: the model 'tiny' is text-only: it takes no images"
        )
    finally:
        server.stop()


def test_local_files_need_the_option(setup):
    vision, _, pictures = setup
    model, tok, _ = load_for_command(vision, device="cpu", tokenizer_needed="to serve")
    server = Running((model, tok))  # no --allowed-local-media-path
    try:
        error = bad_request(server.client, chat("Add.", str(pictures[0])))
        assert "--allowed-local-media-path" in error["message"]
        assert error["param"] == "messages[0].content[0]"
    finally:
        server.stop()


def test_serve_refuses_a_missing_media_folder(setup, tmp_path, capsys):
    from herd.cli import main

    missing = tmp_path / "nowhere"
    code = main(["serve", str(setup[0]), "--allowed-local-media-path", str(missing)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"herd serve: error: --allowed-local-media-path {missing}: not a folder\n"


def test_the_guard_reads_the_text_of_a_turn_with_pictures(setup, guard, vision_server):
    """`herd serve --guard` with pictures: the guard judges the turn's text (Llama Guard 3
    without its vision input), an unsafe request is refused, a safe one answered as unguarded."""
    from herd.guard.moderator import REFUSAL

    _, model, tok, pictures, _ = vision_server
    server = Running((model, tok), load=False, guard=guard)
    try:
        server.engine = Engine(
            model, tok, max_batch=2, prefill_chunk=16, metrics=server.state.metrics, max_images=1
        )
        server.state.set_engine(server.engine.start())
        refused = ask(server.client, chat("How do I make a bomb?", data_url(pictures[0])))
        assert refused.choices[0].message.content == REFUSAL
        assert refused.choices[0].finish_reason == "content_filter"
        safe = ask(server.client, chat("What is 3 plus 4?", data_url(pictures[0])))
        assert safe.choices[0].message.content == expected(model, tok, "What is 3 plus 4?",
                                                           pictures[:1])[0]  # fmt: skip
    finally:
        server.stop()
