"""Chat formats: token sequences identical to Meta's reference formatters, and the loss mask.

Llama 3: llama-models' ChatFormat (installed from PyPI) is the reference. Llama 2: the rules of
Meta's `chat_completion` (llama/generation.py), restated here on sentencepiece directly, plus golden
strings that show the layout a reader can check by eye.
"""

from __future__ import annotations

import json

import pytest

from herd import HerdError, load_tokenizer
from tests import references

DIALOG = [
    {"role": "system", "content": "Environment: ipython\nTools: brave_search, wolfram_alpha\n"},
    {"role": "user", "content": "What's the weather in Menlo Park? <|eot_id|>"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {
                    "name": "brave_search",
                    "arguments": '{"query": "Menlo Park weather"}',
                },
            }
        ],
    },
    {"role": "tool", "content": '{"temp": 21, "sky": "clear"}'},
    {"role": "assistant", "content": "Clear and 21°C."},
    {"role": "user", "content": "Compute 2**10 with code."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "code_interpreter", "arguments": {"code": "print(2**10)"}}}
        ],
    },
    {"role": "ipython", "content": "1024"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}],
    },
    {"role": "tool", "content": "12:00"},
    {"role": "assistant", "content": "It is noon, and 2**10 is 1024."},
]


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(references.llama3_tokenizer())


@pytest.fixture(scope="module")
def llama2():
    return load_tokenizer(references.llama2_tokenizer())


def _meta_llama3(tok_path, messages, builtin_eom=True):
    """The same dialog through llama-models' ChatFormat."""
    from llama_models.datatypes import RawMessage, StopReason, ToolCall, ToolPromptFormat
    from llama_models.llama3 import chat_format  # the reference: a dev dependency
    from llama_models.llama3.tokenizer import Tokenizer

    raw = []
    for m in messages:
        calls = []
        for c in m.get("tool_calls", []):
            fn = c["function"]
            args = fn["arguments"]
            args = json.loads(args) if isinstance(args, str) else args
            calls.append(ToolCall(call_id="0", tool_name=fn["name"], arguments=args))
        builtin = any(
            c["function"]["name"] in ("brave_search", "code_interpreter")
            for c in m.get("tool_calls", [])
        )
        stop = StopReason.end_of_message if builtin and builtin_eom else StopReason.end_of_turn
        role = "tool" if m["role"] in ("tool", "ipython") else m["role"]
        raw.append(RawMessage(role=role, content=m["content"], tool_calls=calls, stop_reason=stop))
    formatter = chat_format.ChatFormat(Tokenizer(tok_path))
    return formatter.encode_dialog_prompt(raw, ToolPromptFormat.json).tokens


def test_llama3_matches_meta_reference(llama3):
    ids, mask = llama3.encode_dialog(DIALOG)
    assert ids == _meta_llama3(llama3.path, DIALOG)
    assert len(mask) == len(ids)


def test_llama3_golden_layout_and_mask(llama3):
    dialog = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    ids, mask = llama3.encode_dialog(dialog)
    assert llama3.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert llama3.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "Hello!<|eot_id|>"
    # the typed <|eot_id|> in DIALOG's user turn stays text: one real end-of-turn per message
    ids, mask = llama3.encode_dialog(DIALOG, add_generation_prompt=False)
    assert ids.count(128009) + ids.count(128008) == len(DIALOG)
    trained = llama3.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == (
        'brave_search.call(query="Menlo Park weather")<|eom_id|>Clear and 21°C.<|eot_id|>'
        "<|python_tag|>print(2**10)<|eom_id|>"
        '{"type": "function", "name": "get_time", "parameters": {"tz": "UTC"}}<|eot_id|>'
        "It is noon, and 2**10 is 1024.<|eot_id|>"
    )


def _meta_llama2(sp_path, dialog):
    """Meta's chat_completion rules, on sentencepiece directly."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_path))
    if dialog[0]["role"] == "system":
        merged = "<<SYS>>\n" + dialog[0]["content"] + "\n<</SYS>>\n\n" + dialog[1]["content"]
        dialog = [{"role": dialog[1]["role"], "content": merged}, *dialog[2:]]
    tokens = []
    for q, a in zip(dialog[::2], dialog[1::2], strict=False):
        text = f"[INST] {q['content'].strip()} [/INST] {a['content'].strip()} "
        tokens += [1, *sp.encode(text), 2]
    if len(dialog) % 2:
        tokens += [1, *sp.encode(f"[INST] {dialog[-1]['content'].strip()} [/INST]")]
    return tokens


def test_llama2_matches_meta_rules_and_golden(llama2):
    dialog = [
        {"role": "system", "content": "Always answer with emojis."},
        {"role": "user", "content": "  How to go from Beijing to NY? "},
        {"role": "assistant", "content": " ✈️🗽 "},
        {"role": "user", "content": "And back?"},
    ]
    ids, mask = llama2.encode_dialog(dialog)
    assert ids == _meta_llama2(llama2.path, dialog)
    assert llama2.decode(ids[: ids.index(2) + 1]) == (
        # Meta strips the merged system+user text, so the user's own leading spaces stay
        "[INST] <<SYS>>\nAlways answer with emojis.\n<</SYS>>\n\n  How to go from Beijing to NY? "
        "[/INST] ✈️🗽 "
    )
    answer = [i for i, m in zip(ids, mask, strict=True) if m]
    assert answer[-1] == 2 and llama2.decode(answer) == "✈️🗽 "
    assert mask[-1] == 0  # the final user turn is prompt


def test_bad_dialogs(llama2, llama3):
    with pytest.raises(HerdError, match="role 'robot'"):
        llama3.encode_dialog([{"role": "robot", "content": "x"}])
    with pytest.raises(HerdError, match="alternating"):
        llama2.encode_dialog([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(HerdError, match="non-empty list"):
        llama3.encode_dialog([])
    with pytest.raises(HerdError, match="arguments are not JSON"):
        llama3.encode_dialog(
            [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                }
            ]
        )


def test_pictured_dialog_matches_meta_reference(llama3, tmp_path):
    """encode_pictured_dialog: each picture's <|image|> where its part stands, the text piece by
    piece, as llama-models' ChatFormat encodes RawMediaItem content; the mask trains the
    assistant's text parts and never a picture; other formats refuse pictures."""
    import io

    from llama_models.datatypes import RawMediaItem, RawMessage, RawTextItem
    from llama_models.llama3 import chat_format
    from llama_models.llama3.tokenizer import Tokenizer
    from PIL import Image

    from herd.tokenizer.chat import encode_pictured_dialog

    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    a, b = ("picture", 1), ("picture", 2)  # the caller's objects (not strings: text)
    messages = [
        {"role": "system", "content": "Describe pictures."},
        {"role": "user", "content": ["Compare ", a, " with", b, " please."]},
        {"role": "assistant", "content": ["They differ", " in colour."]},
        {"role": "user", "content": [b, "And this one?"]},
    ]
    image_id = 128256  # the model's <|image|>, past the vocabulary, as Meta's ChatFormat maps it
    encoded, shown = encode_pictured_dialog(llama3, messages, image_id)
    assert shown == [a, b, b]

    def raw(piece):
        return (
            RawTextItem(text=piece) if isinstance(piece, str) else RawMediaItem(data=png.getvalue())
        )

    meta = chat_format.ChatFormat(Tokenizer(llama3.path)).encode_dialog_prompt(
        [
            RawMessage(role=m["role"], content=[raw(p) for p in m["content"]])
            if isinstance(m["content"], list)
            else RawMessage(role=m["role"], content=m["content"])
            for m in messages
        ]
    )
    assert encoded.ids == meta.tokens
    trained = llama3.decode([i for i, m in zip(encoded.ids, encoded.mask, strict=True) if m])
    assert trained == "They differ in colour.<|eot_id|>"
    # no pictures: encode_dialog's encoding
    plain = [{"role": "user", "content": "Hi"}]
    assert encode_pictured_dialog(llama3, plain, image_id) == (llama3.encode_dialog(plain), [])


def test_pictured_dialog_needs_llama3(llama2):
    from herd.tokenizer.chat import encode_pictured_dialog

    with pytest.raises(HerdError, match="pictures in a conversation need the Llama 3 chat format"):
        encode_pictured_dialog(llama2, [{"role": "user", "content": [object(), "Hi"]}], 7)
