"""A tiny served checkpoint: dim 64, 2 layers, a herd-trained byte-level BPE (Llama 3 chat format)."""

from __future__ import annotations

import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.vocab.bpe import train_bpe
from tests.tokenizer_corpus import CORPUS

CONFIG = herd.ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, ffn_dim=96, max_seq_len=1024
)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    (root / "corpus.txt").write_text("\n".join(CORPUS[:10]) * 10, encoding="utf-8")
    tok_dir = train_bpe([root / "corpus.txt"], 320, root / "tok", show_progress=False)
    model = herd.build_model(CONFIG, seed=3)
    with torch.no_grad():  # sharper distributions than the small init gives, so ties are rare
        model.output.weight.mul_(20)
    files = [tok_dir / "tokenizer.json", tok_dir / "tokenizer_config.json"]
    return save_herd_folder(CONFIG, model.state_dict(), root / "tiny", tokenizer=files)


@pytest.fixture(scope="session")
def loaded(checkpoint):
    from herd.checkpoint.loading import load_for_command

    model, tok, _ = load_for_command(checkpoint, device="cpu", tokenizer_needed="to serve")
    return model.eval(), tok
