"""llama2.c reader: files in each header version, shared and unshared classifier, bad files."""

from __future__ import annotations

import pytest
import torch

import herd
from herd.checkpoint.llama2c import read_llama2c
from tests.llama2c_files import random_llama2c_weights, reference_logits, write_llama2c


@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_read_each_version(tmp_path, version, shared):
    w, params = random_llama2c_weights(shared=shared)
    path = tmp_path / f"v{version}.bin"
    write_llama2c(path, w, params, version)  # v2 replaces w with the dequantized values
    config, _ = read_llama2c(path)
    assert (config.dim, config.ffn_dim, config.n_layers) == params[:3]
    assert (config.n_heads, config.n_kv_heads, config.vocab_size) == params[3:]
    assert config.max_seq_len == 64 and config.tie_embeddings == shared

    model = herd.load(path)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0]
    assert (ours - reference_logits(w, params, tokens)).abs().max().item() < 1e-4


def test_truncated_file_is_rejected(tmp_path):
    w, params = random_llama2c_weights()
    path = tmp_path / "model.bin"
    write_llama2c(path, w, params, 1)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(herd.HerdError, match="file ends inside"):
        read_llama2c(path)
    path.write_bytes(data + b"\0" * 8)
    with pytest.raises(herd.HerdError, match="trailing bytes"):
        read_llama2c(path)


def test_unknown_version(tmp_path):
    w, params = random_llama2c_weights()
    path = tmp_path / "model.bin"
    write_llama2c(path, w, params, 1)
    data = bytearray(path.read_bytes())
    data[4] = 7
    path.write_bytes(bytes(data))
    with pytest.raises(herd.HerdError, match="version 7 is not supported"):
        read_llama2c(path)
