"""herd/data/image_text.py: image-text rows (captions, conversations with image parts, text
alone), their ids and loss masks, the padded collate, and one-line errors naming row and field."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

from herd.data.image_text import ImageTextBatches, collate, load_image_text
from herd.data.objectives import IGNORE_INDEX
from herd.errors import HerdError
from herd.train.adapters import vision_tiler
from tests.sums_tokenizer import sums_tokenizer
from tests.unit.test_generate_image import VISION  # the same tiny encoder

IMAGE_ID = 1000  # the model's <|image|>: past the tokenizer's vocabulary


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return sums_tokenizer(tmp_path_factory.mktemp("image_text_tok"))


@pytest.fixture
def pictures(tmp_path):
    """A square and a wide picture in tmp_path/img (paths relative to tmp_path)."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "img" / "red.png")
    Image.new("RGB", (60, 20), (0, 0, 255)).save(tmp_path / "img" / "wide.png")
    return tmp_path


def _rows(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def _data_url(color) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 30), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_caption_text_and_chat_rows(tok, pictures):
    rows = [
        {"image": "img/red.png", "text": "What is 3 plus 4?"},
        {"images": ["img/red.png", "img/wide.png"], "text": "7."},
        {"text": "What is 1 plus 1? 2."},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is "},
                        {"type": "image", "path": "img/wide.png"},
                        {"type": "image_url", "image_url": {"url": _data_url((0, 255, 0))}},
                        {"type": "text", "text": "?"},
                    ],
                },
                {"role": "assistant", "content": "7."},
            ]
        },
        {  # TRL's layout: bare image parts take the row's images in order
            "images": ["img/red.png"],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Sum?"}]},
                {"role": "assistant", "content": "3."},
            ],
        },
    ]
    data = load_image_text(tok, _rows(pictures / "d.jsonl", rows), 64, IMAGE_ID, strict=True)
    cap, two, text, chat, trl = data.examples
    ids = tok.encode("What is 3 plus 4?", bos=True, eos=True)
    assert cap.ids == [IMAGE_ID, *ids]
    assert cap.mask == [0, 0] + [1] * (len(ids) - 1)  # no loss on <|image|> and BOS
    assert cap.pictures == [pictures / "img" / "red.png"]
    assert two.ids[:3] == [IMAGE_ID, IMAGE_ID, tok.bos_id] and len(two.pictures) == 2
    assert IMAGE_ID not in text.ids and text.pictures == [] and text.mask[0] == 0
    # the chat: the pictures' ids where their parts stand, the user turn's text encoded piece by
    # piece; the loss on the assistant's turn as herd's chat encoding marks it
    plain = tok.encode_dialog(
        [{"role": "user", "content": "X"}, {"role": "assistant", "content": "7."}], False
    )
    user = [*tok.encode("What is "), IMAGE_ID, IMAGE_ID, *tok.encode("?")]
    at = plain.ids.index(tok.encode("X")[0])
    assert chat.ids == plain.ids[:at] + user + plain.ids[at + 1 :]
    assert chat.mask == plain.mask[:at] + [0] * len(user) + plain.mask[at + 1 :]
    assert isinstance(chat.pictures[1], bytes) and len(chat.pictures) == 2
    assert trl.ids.count(IMAGE_ID) == 1 and trl.pictures == [pictures / "img" / "red.png"]


def test_collate_pads_tokens_images_and_tiles(tok, pictures):
    rows = [
        {"image": "img/red.png", "text": "What is 3 plus 4? 7."},  # 1 picture, 1 tile
        {"images": ["img/red.png", "img/wide.png"], "text": "7."},  # 2 pictures, 1 + 2 tiles
        {"text": "What is 1 plus 1? 2."},  # none
    ]
    data = load_image_text(tok, _rows(pictures / "d.jsonl", rows), 64, IMAGE_ID, strict=True)
    tiler = vision_tiler(VISION)
    batch = collate(data.examples, tiler, pad_id=0)
    longest = max(len(e.ids) for e in data.examples)
    assert tuple(batch.inputs.shape) == (3, longest - 1)
    assert tuple(batch.pixels.shape) == (3, 2, 2, 3, 28, 28)  # most pictures, most tiles
    assert batch.aspect_ratio_ids.tolist() == [[1, 0], [1, 2], [0, 0]]  # 0: an empty slot
    assert batch.pixels[0, 1].abs().sum() == 0 and batch.pixels[1, 0, 1].abs().sum() == 0
    tiles, _ = tiler(pictures / "img" / "wide.png", "wide")
    assert torch.equal(batch.pixels[1, 1], tiles)
    for b, e in enumerate(data.examples):
        n = len(e.ids) - 1
        assert batch.inputs[b, :n].tolist() == e.ids[:-1]
        want = [t if m else IGNORE_INDEX for t, m in zip(e.ids[1:], e.mask[1:], strict=True)]
        assert batch.targets[b, :n].tolist() == want
        assert (batch.targets[b, n:] == IGNORE_INDEX).all()
    assert IMAGE_ID not in batch.targets.tolist()
    assert batch.loss_count() == sum(sum(e.mask[1:]) for e in data.examples)
    text_only = collate(data.examples[2:], tiler)
    assert text_only.pixels is None and text_only.aspect_ratio_ids is None


def test_batches_resume_where_they_stopped(tok, pictures):
    rows = [{"image": "img/red.png", "text": f"What is {i} plus 1?"} for i in range(7)]
    data = load_image_text(tok, _rows(pictures / "d.jsonl", rows), 64, IMAGE_ID)
    tiler = vision_tiler(VISION)
    a = ImageTextBatches(data.examples, 2, tiler, seed=3)
    first = [a.next_micro_batch().inputs for _ in range(5)]
    b = ImageTextBatches(data.examples, 2, tiler, seed=3)
    b.next_micro_batch()
    c = ImageTextBatches(data.examples, 2, tiler, seed=3)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(c.next_micro_batch().inputs, x) for x in first[1:])
    assert len(list(a.sequential())) == 3


def test_truncation_drops_pictures_whose_token_was_cut(tok, pictures):
    turn = [
        {"type": "text", "text": "What is 3 plus 4? " * 3},
        {"type": "image", "path": "img/red.png"},
    ]
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": "img/red.png"}]},
                {"role": "assistant", "content": "7."},
                {"role": "user", "content": turn},
                {"role": "assistant", "content": "9."},
            ]
        }
    ]
    source = _rows(pictures / "d.jsonl", rows)
    full = load_image_text(tok, source, 500, IMAGE_ID, strict=True).examples[0]
    cut_at = full.ids.index(IMAGE_ID, full.ids.index(IMAGE_ID) + 1) - 1
    data = load_image_text(tok, source, cut_at, IMAGE_ID, on_long="truncate")
    (e,) = data.examples
    assert e.ids.count(IMAGE_ID) == 1 and len(e.pictures) == 1
    assert data.counts["truncated"] == 1
    assert load_image_text(tok, source, cut_at, IMAGE_ID).counts["too_long"] == 1


@pytest.mark.parametrize(
    "row, fragments",
    [
        ({"image": "img/none.png", "text": "a"}, ["d.jsonl:1", "image 1", "none.png", "no such"]),
        ({"image": "img/bad.png", "text": "a"}, ["d.jsonl:1", "image 1", "not an image"]),
        ({"image": "img/red.png"}, ["d.jsonl:1", "neither 'text' nor 'messages'"]),
        ({"image": "data:image/png;base64,@@", "text": "a"}, ["image 1", "base64"]),
        ({"image": 3, "text": "a"}, ["image 1", "expected a file path"]),
        ({"text": " "}, ["d.jsonl:1", "text: expected a non-empty string"]),
        (
            {
                "images": ["img/red.png", "img/red.png"],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                    {"role": "assistant", "content": "3."},
                ],
            },
            ["d.jsonl:1", "images: 1 more pictures than image parts"],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}]},
                    {"role": "assistant", "content": "3."},
                ]
            },
            ["messages[0].content[0]", "without a picture"],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": [{"type": "image", "path": "img/red.png"}]},
                ]
            },
            ["messages[1].content[0]", "only user turns"],
        ),
        ({"messages": [{"role": "user", "content": "Hi"}]}, ["no assistant turn"]),
        ("{not json", ["d.jsonl:1", "not valid JSON"]),
    ],
)
def test_bad_rows_are_one_line_errors(tok, pictures, row, fragments):
    (pictures / "img" / "bad.png").write_bytes(b"not a png at all")
    source = _rows(pictures / "d.jsonl", [row])
    with pytest.raises(HerdError) as e:
        load_image_text(tok, source, 64, IMAGE_ID, strict=True)
    message = str(e.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    skipped = load_image_text(tok, source, 64, IMAGE_ID)  # not strict: reported and skipped
    assert skipped.counts["malformed"] == 1 and skipped.problems == [message]


def test_a_picture_damaged_past_its_header_fails_when_batched(tok, pictures):
    whole = (pictures / "img" / "wide.png").read_bytes()
    (pictures / "img" / "cut.png").write_bytes(whole[: len(whole) // 2])
    source = _rows(pictures / "d.jsonl", [{"image": "img/cut.png", "text": "a"}])
    data = load_image_text(tok, source, 64, IMAGE_ID, strict=True)
    with pytest.raises(HerdError, match=r"d\.jsonl:1: image 1.*cut\.png") as e:
        collate(data.examples, vision_tiler(VISION))
    assert "\n" not in str(e.value)


def test_parquet_with_image_bytes_as_hugging_face_datasets_writes_it(tok, tmp_path):
    """A Parquet file written by `datasets` with an Image feature (a struct of bytes and path per
    row), as Hugging Face image-text datasets ship: the pictures are the bytes, decoded to the
    same tiles as the pictures themselves."""
    import datasets

    drawn = [Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (60, 20), (0, 0, 255))]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    table = datasets.Dataset.from_dict(
        {"image": drawn, "text": ["What is 3 plus 4?", "7."]}, features=features
    )
    table.to_parquet(str(tmp_path / "pictures.parquet"))
    data = load_image_text(tok, str(tmp_path / "pictures.parquet"), 64, IMAGE_ID, strict=True)
    assert [e.ids[0] for e in data.examples] == [IMAGE_ID, IMAGE_ID]
    assert all(isinstance(e.pictures[0], bytes) for e in data.examples)
    tiler = vision_tiler(VISION)
    batch = collate(data.examples, tiler, pad_id=0)
    for row, picture in enumerate(drawn):
        tiles, _ = tiler(picture, "drawn")
        assert torch.equal(batch.pixels[row, 0, : len(tiles)], tiles)
