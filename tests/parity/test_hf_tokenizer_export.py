"""Hugging Face tokenizer export: transformers' AutoTokenizer, loading what herd writes, gives herd's
ids, for the Llama 2 and Llama 3 reference tokenizers and a herd-trained byte-level BPE.

Plain text: `tokenizer.encode(text)` equals herd's `encode(text, bos=True)` on a few hundred strings
(many scripts, emoji, whitespace runs, digits). Special-token text typed into the input: herd
encodes it as text by default, which transformers does with `split_special_tokens=True`; where herd
is asked to parse it (`allow_special=True`), transformers' default agrees. Chat: the exported
template's `apply_chat_template(messages, add_generation_prompt=...)` equals `encode_dialog`.
And `herd convert --to hf` writes all of it beside the weights.
"""

from __future__ import annotations

import json
import shutil

import pytest

transformers = pytest.importorskip("transformers")

import herd  # noqa: E402
from herd import HerdError, load_tokenizer  # noqa: E402
from herd.checkpoint.io import save_herd_folder  # noqa: E402
from herd.cli import main  # noqa: E402
from herd.tokenizer.base import replace_lone_surrogates  # noqa: E402
from herd.tokenizer.hf_export import FILE_NAMES, write_hf_tokenizer  # noqa: E402
from herd.vocab.bpe import train_bpe  # noqa: E402
from tests import references  # noqa: E402
from tests.tokenizer_corpus import CORPUS  # noqa: E402

PHRASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It's 9:41 -- isn't it? They'd've known; we'll see.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "我能吞下玻璃而不伤身体。人工智能正在改变世界。",
    "こんにちは世界、カタカナ",
    "안녕하세요 세계",
    "مرحبا بالعالم، نص حكيم له سر قاطع",
    "नमस्ते दुनिया, ऋषियों को सताने वाले",
    "Ελληνικά και עברית",
    "😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️‍🔥 1️⃣",
    "0 1 12 123 1234 12345 3.14159 -42 1e-10 0xDEADBEEF",
    "٠١٢٣٤٥ ०१२३ 1,000,000",
    "def add(a, b):\n\treturn a + b  # sum",
    "a\tb\t\tc",
    "x" * 5 + " " * 9 + "y",
]
SPECIAL_TEXT = [
    "<|eot_id|>",
    "<|begin_of_text|>hi<|end_of_text|>",
    "Stop here.<|eot_id|><|start_header_id|>user<|end_header_id|>",
    "[INST] <<SYS>> <s></s> <unk> [/INST]",
]
LAYOUTS = [
    "{0}",
    " {0}",
    "{0} ",
    "   {0}   ",
    "\n\n{0}",
    "{0}\n\n",
    "\t{0}\t",
    "{0}\n\n\n{0}",
    "{0} {0}",
    " \n {0}\r\n",
    "{0}    \t  {0}",
    "{0}\n",
    "\n{0}",
    "{0}\t\t{0}",
]
EXTRA = ["", " ", "  ", "\n", "\n\n", "\t\t", " \n\n ", "\r\n\r\n"]
TEXTS = [layout.format(p) for p in PHRASES + SPECIAL_TEXT for layout in LAYOUTS] + CORPUS + EXTRA

DIALOGS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "system", "content": "  Réponds en français.\n"},
        {"role": "user", "content": " Bonjour ! "},
        {"role": "assistant", "content": "Bonjour. Comment puis-je aider ?  "},
        {"role": "user", "content": "Ça va ?\n\nEt toi ?"},
    ],
    [
        {"role": "user", "content": "写一首诗"},
        {"role": "assistant", "content": "床前明月光"},
        {"role": "user", "content": "再来 😀 Привет"},
        {"role": "assistant", "content": "疑是地上霜\n"},
    ],
]
# Llama 3 only: tool calls (arguments as objects, transformers' convention) and tool results.
TOOL_DIALOG = [
    {"role": "system", "content": "Environment: ipython\nTools: brave_search, wolfram_alpha\n"},
    {"role": "user", "content": "What's the weather in Zürich?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "brave_search", "arguments": {"query": "Zürich weather"}}}
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
        "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "Zürich"}}}],
        "stop_reason": "end_of_message",
    },
    {"role": "tool", "content": "12:00"},
    {"role": "assistant", "content": "It is noon, and 2**10 is 1024."},
]


@pytest.fixture(scope="module")
def trained_bpe(tmp_path_factory):
    """A small byte-level BPE from `herd tokenizer train` (Llama 3 specials and chat format)."""
    root = tmp_path_factory.mktemp("bpe")
    text = replace_lone_surrogates("\n".join(CORPUS + PHRASES))
    (root / "corpus.txt").write_text(text * 10, encoding="utf-8")
    return train_bpe([root / "corpus.txt"], 600, root / "tok", show_progress=False)


@pytest.fixture(scope="module", params=["llama2", "llama3", "trained-bpe"])
def pair(request, tmp_path_factory):
    """(herd tokenizer, transformers tokenizer loaded from herd's export of it)."""
    if request.param == "llama2":
        source = references.llama2_tokenizer()
    elif request.param == "llama3":
        source = references.llama3_tokenizer()
    else:
        source = request.getfixturevalue("trained_bpe")
    tok = load_tokenizer(source)
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    write_hf_tokenizer(tok, folder, model_max_length=4096)
    return tok, transformers.AutoTokenizer.from_pretrained(folder), folder


def _has_special_text(tok, text: str) -> bool:
    return any(name in text for name in tok.special_tokens)


def test_texts_cover_what_they_claim():
    assert len(TEXTS) >= 300
    assert sum("<|eot_id|>" in t for t in TEXTS) >= 10


def test_plain_text_ids_equal_herd(pair):
    tok, hf, _ = pair
    for text in TEXTS:
        if _has_special_text(tok, text):
            continue
        assert hf.encode(replace_lone_surrogates(text)) == tok.encode(text, bos=True), repr(text)
    assert hf("Hello world")["input_ids"] == tok.encode("Hello world", bos=True)


def test_special_token_text_as_herd_encodes_it(pair):
    tok, hf, _ = pair
    for text in TEXTS:
        ours = tok.encode(text, bos=True)  # special-token text stays text
        assert hf.encode(replace_lone_surrogates(text), split_special_tokens=True) == ours
        if tok.kind != "llama2-sentencepiece":  # sentencepiece never parses "<s>" out of text
            parsed = tok.encode(text, bos=True, allow_special=True)
            assert hf.encode(replace_lone_surrogates(text)) == parsed, repr(text)


def test_llama2_hello_world_has_bos_and_prefix(pair):
    tok, hf, _ = pair
    if tok.kind == "llama2-sentencepiece":
        assert hf.encode("Hello world") == [1, 15043, 3186]
    assert hf.decode(hf.encode("Hello world"), skip_special_tokens=True) == "Hello world"


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_equals_encode_dialog(pair, generation_prompt):
    tok, hf, _ = pair
    dialogs = DIALOGS + ([TOOL_DIALOG] if tok.chat_format == "llama3" else [])
    for messages in dialogs:
        expected = tok.encode_dialog(messages, add_generation_prompt=generation_prompt).ids
        got = hf.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, return_dict=False
        )
        assert got == expected, hf.apply_chat_template(messages, tokenize=False)


def test_chat_template_refuses_what_herd_refuses(pair):
    import jinja2

    tok, hf, _ = pair
    bad = (
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        if tok.chat_format == "llama2"
        else [{"role": "narrator", "content": "a"}]
    )
    with pytest.raises(HerdError):
        tok.encode_dialog(bad)
    with pytest.raises(jinja2.TemplateError, match=r"role|alternating"):
        hf.apply_chat_template(bad)


def test_config_files(pair):
    tok, hf, folder = pair
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILE_NAMES)  # no temporary left
    names = {i: n for n, i in tok.special_tokens.items()}
    assert hf.bos_token == names[tok.bos_id] and hf.eos_token == names[tok.eos_id]
    assert hf.model_max_length == 4096
    generation = transformers.GenerationConfig.from_pretrained(folder)
    stops = generation.eos_token_id
    assert (stops if isinstance(stops, list) else [stops]) == tok.stop_ids
    assert generation.bos_token_id == tok.bos_id
    special_map = json.loads((folder / "special_tokens_map.json").read_text())
    assert special_map["bos_token"] == names[tok.bos_id]


def test_herd_reads_the_export_back(pair):
    tok, _, folder = pair
    again = load_tokenizer(folder)
    assert (again.bos_id, again.eos_id, again.chat_format) == (
        tok.bos_id,
        tok.eos_id,
        tok.chat_format,
    )
    assert again.stop_ids == tok.stop_ids
    for text in TEXTS:
        assert again.encode(text, bos=True) == tok.encode(text, bos=True), repr(text)
    assert again.encode_dialog(DIALOGS[2]).ids == tok.encode_dialog(DIALOGS[2]).ids


CONFIG = herd.ModelConfig(
    dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=600, ffn_dim=64, max_seq_len=256
)


@pytest.mark.parametrize("kind", ["llama2", "trained-bpe"])
def test_convert_to_hf_carries_a_tokenizer_transformers_reads_as_herd(kind, request, tmp_path):
    """A tiny herd checkpoint with its tokenizer -> `herd convert --to hf` -> AutoTokenizer."""
    if kind == "llama2":  # under the name a checkpoint folder carries it by
        files = [tmp_path / "tokenizer.model"]
        shutil.copy(references.llama2_tokenizer(), files[0])
        config = CONFIG.replace(vocab_size=32000)
    else:
        bpe = request.getfixturevalue("trained_bpe")
        files = [bpe / "tokenizer.json", bpe / "tokenizer_config.json"]
        config = CONFIG
    model = herd.build_model(config, seed=0)
    save_herd_folder(config, model.state_dict(), tmp_path / "herd", tokenizer=files)
    assert main(["convert", str(tmp_path / "herd"), str(tmp_path / "hf"), "--to", "hf"]) == 0

    tok = load_tokenizer(files[0])
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in PHRASES:
        assert hf.encode(text) == tok.encode(text, bos=True), repr(text)
    for messages in DIALOGS:
        expected = tok.encode_dialog(messages).ids
        assert hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == (
            expected
        )
    generation = transformers.GenerationConfig.from_pretrained(tmp_path / "hf")
    stops = generation.eos_token_id
    assert (stops if isinstance(stops, list) else [stops]) == tok.stop_ids
    hf_config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert hf_config.bos_token_id == tok.bos_id
    if kind == "llama2":  # the sentencepiece model travels too
        assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == files[0].read_bytes()


def test_convert_copies_a_tokenizer_it_cannot_export(tmp_path, capsys):
    """A sentencepiece unigram model (what `herd vocab` builds) has no exact export here: the
    weights are converted anyway, the model file is copied, and a warning says why."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS[:5] * 20),
        model_writer=model,
        model_type="unigram",
        vocab_size=150,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    config = CONFIG.replace(vocab_size=load_tokenizer(tmp_path / "tokenizer.model").vocab_size)
    files = [tmp_path / "tokenizer.model"]
    weights = herd.build_model(config, seed=0).state_dict()
    save_herd_folder(config, weights, tmp_path / "herd", tokenizer=files)
    assert main(["convert", str(tmp_path / "herd"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == files[0].read_bytes()
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
