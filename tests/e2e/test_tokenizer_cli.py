"""`herd tokenizer ...`, `herd generate --chat` and `herd chat` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import herd
from herd.checkpoint.io import save_herd_folder
from herd.vocab.bpe import train_bpe
from tests import references
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error
from tests.tokenizer_corpus import CORPUS

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, ffn_dim=64, max_seq_len=256
)


@pytest.fixture(scope="module")
def llama3_path():
    return references.llama3_tokenizer()


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    """A tiny model carrying a herd-trained byte-level BPE (Llama 3 chat format)."""
    root = tmp_path_factory.mktemp("chat")
    (root / "corpus.txt").write_text("\n".join(CORPUS[:10]) * 10, encoding="utf-8")
    tok_dir = train_bpe([root / "corpus.txt"], 320, root / "tok", show_progress=False)
    model = herd.build_model(CONFIG, seed=0)
    files = [tok_dir / "tokenizer.json", tok_dir / "tokenizer_config.json"]
    return save_herd_folder(CONFIG, model.state_dict(), root / "model", tokenizer=files)


def test_encode_decode_info(llama3_path, tmp_path):
    out = herd_cli_inprocess(
        "tokenizer", "encode", llama3_path, "Hello <|eot_id|>", "--bos", "--json"
    )
    ids = json.loads(out.stdout)["ids"]
    tok = herd.load_tokenizer(llama3_path)
    assert ids == tok.encode("Hello <|eot_id|>", bos=True)
    out = herd_cli_inprocess(
        "tokenizer", "decode", llama3_path, ",".join(map(str, ids)), "--skip-special"
    )
    assert out.stdout == "Hello <|eot_id|>\n"
    info = json.loads(herd_cli_inprocess("tokenizer", "info", llama3_path, "--json").stdout)
    assert info["vocab_size"] == 128256 and info["chat_format"] == "llama3"

    dialog = tmp_path / "dialog.json"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    dialog.write_text(json.dumps(messages))
    got = json.loads(
        herd_cli_inprocess("tokenizer", "encode", llama3_path, "--dialog", dialog, "--json").stdout
    )
    assert got == tok.encode_dialog(messages)._asdict()


def test_train_from_the_command_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(CORPUS[:12]) * 5, encoding="utf-8")
    out = herd_cli("tokenizer", "train", corpus, "--vocab-size", "400", "--out", tmp_path / "t")
    assert "wrote" in out.stdout and "400 tokens" in out.stdout
    assert herd.load_tokenizer(tmp_path / "t").vocab_size == 400


def test_tokenizer_bad_input(tmp_path, llama3_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    one_line_error(
        herd_cli_inprocess("tokenizer", "info", broken, check=False), "not a valid tokenizer.json"
    )
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xc3\x28 broken utf-8")
    one_line_error(
        herd_cli_inprocess(
            "tokenizer", "train", bad, "--vocab-size", "300", "--out", tmp_path / "o", check=False
        ),
        "invalid UTF-8 at byte 3",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(
        herd_cli_inprocess(
            "tokenizer", "train", empty, "--vocab-size", "300", "--out", tmp_path / "o", check=False
        ),
        "empty",
    )
    one_line_error(
        herd_cli_inprocess("tokenizer", "decode", llama3_path, "5,999999", check=False),
        "outside the vocabulary",
    )
    assert not (tmp_path / "o").exists()


def test_generate_chat_and_repl(chat_checkpoint):
    out = herd_cli_inprocess(
        "generate",
        chat_checkpoint,
        "--prompt",
        "hello",
        "--chat",
        "--system",
        "be kind",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    )
    tok = herd.load_tokenizer(chat_checkpoint)
    prompt = tok.encode_dialog(
        [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello"}]
    ).ids
    ids = herd.generate(herd.load(chat_checkpoint), prompt, 8, stop_ids=tok.stop_ids)
    ids = ids[: next((i for i, t in enumerate(ids) if t in tok.stop_ids), len(ids))]
    assert out.stdout == tok.decode(ids, skip_special=True) + "\n"

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "herd",
            "chat",
            str(chat_checkpoint),
            "--max-new-tokens",
            "6",
            "--temperature",
            "0",
        ],
        input="hello\n/reset\nagain\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") == 4 and "llama3 format" in proc.stderr


def test_convert_carries_tokenizer(chat_checkpoint, tmp_path):
    herd_cli("convert", chat_checkpoint, tmp_path / "hf", "--to", "hf")
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    assert (tmp_path / "hf" / "tokenizer_config.json").exists()
    assert herd.load_tokenizer(tmp_path / "hf").chat_format == "llama3"


def test_generate_infill(chat_checkpoint):
    out = herd_cli_inprocess(
        "generate",
        chat_checkpoint,
        "--prompt",
        "x = [<|mask_0|>]",
        "--infill",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    )
    assert out.stdout.startswith("x = [") and out.stdout.endswith("]\n")
    # a real `python -m herd` process: its own exit code 2 and one stderr line
    one_line_error(
        herd_cli("generate", chat_checkpoint, "--prompt", "no sentinel", "--infill", check=False),
        "exactly once",
    )


def test_generate_prompt_attention_follows_the_run(chat_checkpoint, tmp_path, monkeypatch):
    """In a run folder whose config.toml trained with bidirectional attention (mskbi), `--infill`
    prefills its context both ways by default, as training did; elsewhere, or with a causal
    objective, the prompt attends causally unless `--prompt-attention` says otherwise."""
    import argparse
    import shutil

    from herd.textstream import bidirectional_prefix

    runs = {}
    for objective in ("mskbi", "nxtuni"):
        ckpt = tmp_path / objective / "checkpoints" / "step-00000010"
        shutil.copytree(chat_checkpoint, ckpt)
        (tmp_path / objective / "config.toml").write_text(f'[data]\nobjective = "{objective}"\n')
        runs[objective] = ckpt
    prompt = list(range(9))

    def prefix(checkpoint, mode, infill):
        args = argparse.Namespace(checkpoint=str(checkpoint), prompt_attention=mode, infill=infill)
        return bidirectional_prefix(args, prompt)

    assert prefix(runs["mskbi"], "auto", True) == 8  # the context before the appended sentinel
    assert prefix(runs["mskbi"], "auto", False) == 9  # a prefix-LM prefix: the whole prompt
    assert prefix(runs["mskbi"], "causal", True) == 0
    assert prefix(runs["nxtuni"], "auto", True) == 0
    assert prefix(chat_checkpoint, "auto", True) == 0  # not in a run folder
    assert prefix(chat_checkpoint, "bidirectional", True) == 8
    with monkeypatch.context() as m:  # a relative path, as from inside the run's checkpoints/
        m.chdir(runs["mskbi"].parent)
        assert prefix(Path(runs["mskbi"].name), "auto", True) == 8

    argv = ["--prompt", "x = [<|mask_0|>]", "--infill", "--max-new-tokens", "5"]
    auto = herd_cli("generate", runs["mskbi"], *argv)
    assert "attends both ways" in auto.stderr and "mskbi" in auto.stderr
    forced = herd_cli_inprocess(
        "generate", chat_checkpoint, *argv, "--prompt-attention", "bidirectional"
    )
    assert auto.stdout == forced.stdout and auto.stdout.startswith("x = [")
    causal = herd_cli_inprocess("generate", runs["mskbi"], *argv, "--prompt-attention", "causal")
    assert "attends both ways" not in causal.stderr
