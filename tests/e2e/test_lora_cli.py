"""`herd convert ADAPTER DST --merge-lora`: merged herd and HF folders, and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.model.lora import LoraConfig, apply_lora, lora_layers, save_adapter
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, ffn_dim=64, max_seq_len=64
)
TOKENS = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(base folder with a tokenizer.json, adapter folder naming it, the adapted model's logits)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("lora")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer)
    tok.save(str(root / "tokenizer.json"))
    model = herd.build_model(CONFIG, seed=0).eval()
    save_herd_folder(CONFIG, model.state_dict(), root / "base", tokenizer=[root / "tokenizer.json"])
    apply_lora(model, LoraConfig(r=4, alpha=8.0, target_modules=("q_proj", "k_proj", "w2")))
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.normal_(0.0, 0.1)
        logits = model(TOKENS)
    save_adapter(model, root / "adapter", base_path=root / "base")
    return root / "base", root / "adapter", logits


def _logits(folder):
    with torch.no_grad():
        return herd.load(folder)(TOKENS)


def test_merge_to_herd_and_hf_gives_the_adapted_logits(adapted, tmp_path):
    base, adapter, expected = adapted
    proc = herd_cli("convert", adapter, tmp_path / "merged", "--merge-lora")
    assert "wrote" in proc.stdout
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["format"] == "herd"
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    torch.testing.assert_close(_logits(tmp_path / "merged"), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_logits(base), expected, atol=1e-3)

    herd_cli_inprocess("convert", adapter, tmp_path / "hf", "--merge-lora", "--to", "hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["model_type"] == "llama"
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    torch.testing.assert_close(_logits(tmp_path / "hf"), expected, atol=1e-5, rtol=1e-5)


def test_merge_with_an_explicit_base(adapted, tmp_path):
    base, adapter, expected = adapted
    moved = tmp_path / "adapter"
    moved.mkdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "meta-llama/Not-Downloaded"})
    )
    (moved / "adapter_model.safetensors").write_bytes(
        (adapter / "adapter_model.safetensors").read_bytes()
    )
    one_line_error(
        herd_cli_inprocess("convert", moved, tmp_path / "x", "--merge-lora", check=False),
        "meta-llama/Not-Downloaded",
        "--base",
    )
    herd_cli_inprocess("convert", moved, tmp_path / "m", "--merge-lora", "--base", base)
    torch.testing.assert_close(_logits(tmp_path / "m"), expected, atol=1e-5, rtol=1e-5)


def test_merge_errors(adapted, tmp_path):
    base, adapter, _ = adapted
    dst = tmp_path / "out"
    # a real process: the one-line error and exit code as a user sees them
    one_line_error(
        herd_cli("convert", tmp_path / "nope", dst, "--merge-lora", check=False),
        "no such adapter folder",
    )
    one_line_error(
        herd_cli_inprocess("convert", base, dst, "--merge-lora", check=False),
        "not a LoRA adapter folder",
    )
    one_line_error(
        herd_cli_inprocess("convert", adapter, dst, check=False), "LoRA adapter", "--merge-lora"
    )
    one_line_error(
        herd_cli_inprocess("convert", adapter, dst, "--base", base, check=False),
        "--base is only meaningful",
    )
    one_line_error(
        herd_cli_inprocess(
            "convert", adapter, dst, "--merge-lora", "--base", tmp_path / "gone", check=False
        ),
        "base checkpoint not found",
    )
    wider = herd.ModelConfig(**{**CONFIG.to_dict(), "dim": 64})
    other = tmp_path / "wider"
    save_herd_folder(wider, herd.build_model(wider).state_dict(), other)
    one_line_error(
        herd_cli_inprocess("convert", adapter, dst, "--merge-lora", "--base", other, check=False),
        "has shape",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    one_line_error(
        herd_cli_inprocess("convert", broken, dst, "--merge-lora", check=False),
        "no adapter_model.safetensors",
    )
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    one_line_error(
        herd_cli_inprocess("convert", broken, dst, "--merge-lora", check=False),
        "target_modules",
    )
    assert not dst.exists()
