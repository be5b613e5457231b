"""herd checkpoint folders: round trip, sharding, atomic writes, and rejection of bad folders."""

from __future__ import annotations

import json

import pytest
import torch

import herd
from herd.atomic_files import write_folder_atomically
from herd.checkpoint.io import save_herd_folder

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, ffn_dim=64, max_seq_len=64
)


def _save(tmp_path, name="ckpt", **kw):
    model = herd.build_model(CONFIG, seed=1)
    return model, save_herd_folder(CONFIG, model.state_dict(), tmp_path / name, **kw)


def test_roundtrip_and_sharding(tmp_path):
    model, folder = _save(tmp_path, max_shard_bytes=20_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = herd.load(folder)
    tokens = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert herd.load(folder, dtype="bfloat16").embed.weight.dtype == torch.bfloat16


def test_tied_embeddings_stored_once(tmp_path):
    config = CONFIG.replace(tie_embeddings=True)
    model = herd.build_model(config)
    folder = save_herd_folder(config, model.state_dict(), tmp_path / "tied")
    loaded = herd.load(folder)
    assert loaded.output.weight is loaded.embed.weight


def test_existing_destination_is_kept(tmp_path):
    _, folder = _save(tmp_path)
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(herd.HerdError, match="already exists"):
        _save(tmp_path)
    assert (folder / "model.safetensors").read_bytes() == before


def test_failed_write_leaves_nothing(tmp_path):
    def fill(tmp):
        (tmp / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_folder_atomically(tmp_path / "out", fill)
    assert list(tmp_path.iterdir()) == []


def test_bad_folders(tmp_path):
    _, folder = _save(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(herd.HerdError, match="unreadable safetensors file"):
        herd.load(folder)

    _, folder = _save(tmp_path, "shape")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["ffn_dim"] = 80
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(herd.HerdError, match=r"'layers.0.ffn.w1.weight' has shape \[64, 32\]"):
        herd.load(folder)

    cfg["model"]["ffn_dim"] = 64
    cfg["model"]["n_experts"] = 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(herd.HerdError, match="unknown key 'n_experts'"):
        herd.load(folder)

    with pytest.raises(herd.HerdError, match="no such file or folder"):
        herd.load(tmp_path / "missing")
