"""The `herd` command as a user runs it: output, streaming generation, one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest

import herd
from herd.checkpoint.io import save_herd_folder
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, ffn_dim=64, max_seq_len=64
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model with a byte-level BPE tokenizer.json trained by the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("ckpt") / "model"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer)
    tok_file = folder.parent / "tokenizer.json"
    tok.save(str(tok_file))
    model = herd.build_model(CONFIG, seed=0)
    save_herd_folder(CONFIG, model.state_dict(), folder, tokenizer=[tok_file])
    return folder


def test_info_json_for_preset_and_checkpoint(checkpoint):
    d = json.loads(herd_cli_inprocess("info", "llama3-8b", "--json").stdout)
    assert d["parameters"] == 8_030_261_248
    assert {"layers", "dim", "heads", "kv_heads", "ffn_dim", "vocab_size"} <= set(d)
    d = json.loads(herd_cli_inprocess("info", checkpoint, "--json").stdout)
    assert d["parameters"] == CONFIG.num_params() and d["kv_heads"] == 2
    assert "405,853,388,800" in herd_cli_inprocess("info", "llama3-405b").stdout


def test_generate_text_streams_and_stops(checkpoint):
    proc = herd_cli_inprocess(
        "generate",
        checkpoint,
        "--prompt",
        "the quick",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
    )
    model = herd.load(checkpoint)
    tok = herd.load_tokenizer(checkpoint)
    ids = herd.generate(model, tok.encode("the quick", bos=True), 12, stop_ids=tok.stop_ids)
    ids = [i for i in ids if i not in tok.stop_ids]
    assert proc.stdout.rstrip("\n") == tok.decode(ids)
    assert "tokens/s" in proc.stderr

    text = proc.stdout.rstrip("\n")
    if len(text.strip()) > 2:
        stop = text.strip()[1:3]
        stopped = herd_cli_inprocess(
            "generate",
            checkpoint,
            "--prompt",
            "the quick",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
            "--stop",
            stop,
        ).stdout
        assert stopped.rstrip("\n") == text[: text.find(stop)]


def test_generate_from_ids(checkpoint, tmp_path):
    proc = herd_cli(
        "generate",
        checkpoint,
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    )
    assert proc.returncode == 0


def test_bad_input_one_line_exit_2(checkpoint, tmp_path):
    one_line_error(herd_cli_inprocess("info", tmp_path / "nope", check=False), "neither a preset")
    one_line_error(
        herd_cli_inprocess("generate", tmp_path / "nope", "--prompt-ids", "1", check=False),
        "no such file or folder",
    )
    one_line_error(
        herd_cli_inprocess(
            "generate",
            checkpoint,
            "--prompt-ids",
            ",".join(["5"] * 60),
            "--max-new-tokens",
            "10",
            check=False,
        ),
        "exceeds the model's context of 64",
    )
    one_line_error(
        herd_cli_inprocess("generate", checkpoint, "--prompt-ids", "1,x", check=False),
        "not a token-id list",
    )
    one_line_error(
        herd_cli_inprocess("convert", checkpoint, tmp_path / "o", "--to", "gguf", check=False),
        "invalid choice",
    )

    broken = tmp_path / "broken"
    herd_cli_inprocess("convert", checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00")
    one_line_error(
        herd_cli_inprocess("generate", broken, "--prompt-ids", "1", check=False),
        "model.safetensors",
    )


def test_convert_refuses_to_overwrite(checkpoint, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    # a real `python -m herd` process: its own exit code 2 and one stderr line
    one_line_error(herd_cli("convert", checkpoint, dst, check=False), "already exists")
    assert (dst / "keep.txt").read_text() == "mine"


def test_demo_runs_end_to_end_shortened(tmp_path):
    proc = herd_cli(
        "demo",
        "--out",
        tmp_path / "demo",
        "--steps",
        "6",
        "--vocab-size",
        "300",
        "--max-files",
        "60",
    )
    assert "bits/byte" in proc.stdout and "unigram baseline" in proc.stdout
    assert "def fibonacci(n):" in proc.stdout
    assert (tmp_path / "demo" / "run" / "plots" / "loss.png").exists()
    # The step count `make demo` plans from a timed probe of the same model on the same shards:
    # never under the floor of 10, and an hour holds more than that.
    from herd.demo import _steps_for

    common = {
        "model.preset": "demo",
        "data.path": str(tmp_path / "demo" / "data"),
        "data.seq_len": "256",
        "data.batch_size": "4",
    }
    assert _steps_for(0.0001, common) == 10
    assert _steps_for(60, common) > 10


HELP_IMPORTS_NO_TORCH = """
import argparse, contextlib, io, sys
from herd.cli import build_parser, main

def commands(parser, prefix):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, [*prefix, name])

paths = list(commands(build_parser(), []))
for path in paths:
    if path[:1] == ["lm-eval"]:
        continue  # lm-eval's own parser, imported only when it runs
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*path, "--help"])
heavy = sorted(m for m in ("torch", "scipy", "transformers") if m in sys.modules)
print(len(paths), ",".join(heavy) or "none")
"""


def test_help_imports_no_torch():
    """`herd --help` and every `herd SUB [ACTION] --help` build their parsers without importing
    torch (or scipy, transformers): importing herd is lazy, handlers import what they need when they run."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS_NO_TORCH], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    count, heavy = proc.stdout.split()
    assert int(count) > 15 and heavy == "none", proc.stdout


def test_train_help_lists_every_section_and_field():
    import dataclasses

    from herd.train.config import SECTIONS

    text = herd_cli_inprocess("train", "--help").stdout
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name} " in text
    assert "[model]" in text and "model.rope_theta" in text


def test_one_meaning_per_flag(checkpoint):
    """The shared options parse the same way in every subcommand that has them."""
    encode = herd_cli_inprocess("tokenizer", "encode", checkpoint, "the fox", "--json").stdout
    ids = json.loads(encode)["ids"]
    for written in (",".join(map(str, ids)), " ".join(map(str, ids))):
        assert herd_cli_inprocess("tokenizer", "decode", checkpoint, written).stdout == "the fox\n"
    with_bos = json.loads(
        herd_cli_inprocess("tokenizer", "encode", checkpoint, "the fox", "--bos", "--json").stdout
    )["ids"]
    assert len(with_bos) == len(ids) + 1
    one_line_error(
        herd_cli_inprocess("tokenizer", "decode", checkpoint, "1,x", check=False),
        "not a token-id list",
    )
    for sub in (["generate", checkpoint, "--prompt", "a"], ["eval", checkpoint]):
        text = herd_cli_inprocess(*sub[:2], "--help").stdout
        assert "--bos, --no-bos" in text and "--device" in text and "--dtype" in text


def test_a_folder_without_a_model_says_so(checkpoint, tmp_path):
    """generate and eval on a folder that holds no model name what is missing (not the
    tokenizer); a model without a tokenizer says what the tokenizer is needed for."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (
        ["generate", empty, "--prompt", "hi"],
        ["eval", empty, "--task", "mc", "--data", empty],
    ):
        one_line_error(herd_cli_inprocess(*command, check=False), "not a checkpoint folder")
    bare = tmp_path / "bare"
    herd_cli_inprocess("convert", checkpoint, bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    one_line_error(
        herd_cli_inprocess("generate", bare, "--prompt", "hi", check=False),
        "no tokenizer file (tokenizer.json or tokenizer.model), which is needed to encode --prompt",
    )
    proc = herd_cli_inprocess("eval", bare, "--task", "mc", "--data", empty, check=False)
    one_line_error(proc, "needed to encode the evaluation text")
    assert "--prompt-ids" not in proc.stderr
