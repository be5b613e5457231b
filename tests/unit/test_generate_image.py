"""`herd generate --image` and `herd chat --image` (herd/textstream.py, herd/cli.py) end to end on
a tiny random Llama 3.2 Vision model saved as a herd folder with a small Llama 3 chat tokenizer:
the printed text is what `herd.generate` gives for the processor's `Images` and the prompt with
<|image|> where Meta's format puts it; a text model, a bad picture or a mismatched prompt is one
line on stderr and exit code 2."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import herd
from herd.checkpoint.io import save_herd_folder
from herd.cli import main
from herd.model.config import VisionConfig
from herd.model.families import build_model
from herd.model.image_processing import ImageProcessor
from tests.sums_tokenizer import sums_tokenizer

VISION = VisionConfig(
    dim=16,
    n_layers=2,
    n_global_layers=1,
    n_heads=2,
    ffn_dim=32,
    image_size=28,
    patch_size=14,
    max_tiles=2,
    aspect_ratios=((1, 1), (1, 2), (2, 1)),
    feature_layers=(0, 1),
    cross_attention_layers=(1, 3),
)
PROMPT = "What is 3 plus 4?"
SAMPLING = ["--max-new-tokens", "6", "--temperature", "0", "--no-compile", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(vision checkpoint, text checkpoint, tokenizer, model, two picture files)."""
    root = tmp_path_factory.mktemp("generate_image")
    tok = sums_tokenizer(root)
    config = herd.ModelConfig(
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=tok.vocab_size,
        ffn_dim=64,
        max_seq_len=128,
        vision=VISION,
    )
    model = build_model(config, seed=3).eval()
    with torch.no_grad():  # trained-looking gates, so the pictures change what is generated
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.uniform_(0.5, 1.5)
    vision = save_herd_folder(config, model.state_dict(), root / "vision", tokenizer=tok.files())
    text_config = config.replace(vision=None)
    text = herd.build_model(text_config)
    text_ckpt = save_herd_folder(text_config, text.state_dict(), root / "text", tok.files())
    rng = np.random.default_rng(0)
    pictures = []
    for name, size in (("wide.png", (60, 20)), ("small.jpg", (20, 25))):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
        pictures.append(root / name)
    return vision, text_ckpt, tok, model, pictures


def _expected(model, tok, prompt: list[int], pictures) -> str:
    """The text `herd.generate` gives for `prompt` and the processor's `Images` of `pictures`."""
    images = ImageProcessor(model.config.vision)([pictures])
    new = herd.generate(model, prompt, max_new_tokens=6, temperature=0.0, images=images)
    new = new[: next((i for i, t in enumerate(new) if t in tok.stop_ids), len(new))]
    return tok.decode(new, skip_special=True)


def _in_user_turn(tok, dialog: list[dict], count: int, image: int) -> list[int]:
    """The dialog's ids with `count` <|image|> ids right after the user turn's header
    (<|start_header_id|>user<|end_header_id|>, two newlines), as Meta's chat format shows them."""
    ids = tok.encode_dialog(dialog).ids
    special = tok.special_tokens
    header = [special["<|start_header_id|>"], *tok.encode("user"), special["<|end_header_id|>"]]
    at = next(i for i in range(len(ids)) if ids[i : i + len(header)] == header)
    at += len(header) + len(tok.encode("\n\n"))
    return [*ids[:at], *[image] * count, *ids[at:]]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_with_images_is_generate_with_the_processors_images(setup, capsys):
    vision, _, tok, model, pictures = setup
    image = model.config.image_token_id
    argv = ["generate", str(vision), "--prompt", PROMPT, "--image", str(pictures[0]), *SAMPLING]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    # A plain prompt: the picture's <|image|> first, then BOS and the text (transformers'
    # MllamaProcessor layout).
    prompt = [image, *tok.encode(PROMPT, bos=True)]
    assert out == _expected(model, tok, prompt, pictures[:1]) + "\n"
    # The picture matters: without it (text alone) the tiny model says something else.
    code, text_only, _ = _run(argv[:4] + SAMPLING, capsys)
    assert code == 0 and text_only != out


def test_generate_chat_with_two_images(setup, capsys):
    """--chat: <|image|><|image|> open the user turn's text, after its header."""
    vision, _, tok, model, pictures = setup
    image = model.config.image_token_id
    argv = ["generate", str(vision), "--prompt", PROMPT, "--chat", "--system", "Add."]
    argv += ["--image", str(pictures[0]), "--image", str(pictures[1]), *SAMPLING]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    dialog = [{"role": "system", "content": "Add."}, {"role": "user", "content": PROMPT}]
    prompt = _in_user_turn(tok, dialog, 2, image)
    assert out == _expected(model, tok, prompt, pictures) + "\n"


def test_chat_with_an_image(setup, capsys, monkeypatch):
    """`herd chat --image`: the first user turn shows the picture, in every later turn too."""
    vision, _, tok, model, pictures = setup
    image = model.config.image_token_id
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n"))
    code, out, err = _run(["chat", str(vision), "--image", str(pictures[1]), *SAMPLING], capsys)
    assert code == 0, err
    prompt = _in_user_turn(tok, [{"role": "user", "content": PROMPT}], 1, image)
    assert out == "> " + _expected(model, tok, prompt, pictures[1:]) + "\n> \n"


def _error(argv: list[str], capsys) -> str:
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1, err
    return err


def test_text_model_with_an_image_is_one_line(setup, capsys):
    _, text, _, _, pictures = setup
    for command in ("generate", "chat"):
        argv = [command, str(text), "--image", str(pictures[0]), *SAMPLING]
        if command == "generate":
            argv += ["--prompt", PROMPT]
        err = _error(argv, capsys)
        assert err == (
            f"herd {command}: error: {text}: a text-only model; --image needs a vision model "
            "(Llama 3.2 Vision)\n"
        )


def test_bad_image_path_is_one_line(setup, capsys, tmp_path):
    vision, _, _, _, pictures = setup
    missing = tmp_path / "missing.png"
    argv = ["generate", str(vision), "--prompt", PROMPT, *SAMPLING]
    err = _error([*argv, "--image", str(pictures[0]), "--image", str(missing)], capsys)
    assert err == f"herd generate: error: {missing}: no such image file\n"
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello")
    err = _error([*argv, "--image", str(notes)], capsys)
    assert err.startswith(f"herd generate: error: {notes}: not an image Pillow can read")


def test_prompt_ids_must_hold_the_image_tokens(setup, capsys):
    vision, _, _, _, pictures = setup
    argv = ["generate", str(vision), "--prompt-ids", "0,5,6", "--image", str(pictures[0])]
    err = _error([*argv, *SAMPLING], capsys)
    assert "1 images but 0 <|image|> tokens" in err


def test_help_explains_image(capsys):
    for command in ("generate", "chat"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
        assert "--image PATH show the picture at PATH to a vision model (Llama 3.2 Vision" in out
