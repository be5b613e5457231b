"""Meta original folders: params.json + model-parallel consolidated.NN.pth shards, merged.

The reference is transformers' LlamaForCausalLM: its weights are rewritten into Meta's layout
(interleaved RoPE rows, fairscale row/column splits) by code in this test, and herd must recover
the same logits.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import herd  # noqa: E402
from herd.cli import main  # noqa: E402


def _to_interleaved(w, n_heads):
    out, inp = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def _meta_shards(hf, n_shards, vocab_parallel_embedding):
    cfg = hf.config
    sd = hf.state_dict()
    full = {
        "tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        full.update(
            {
                f"layers.{i}.attention.wq.weight": _to_interleaved(
                    sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads
                ),
                f"layers.{i}.attention.wk.weight": _to_interleaved(
                    sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads
                ),
                f"layers.{i}.attention.wv.weight": sd[p + "self_attn.v_proj.weight"],
                f"layers.{i}.attention.wo.weight": sd[p + "self_attn.o_proj.weight"],
                f"layers.{i}.feed_forward.w1.weight": sd[p + "mlp.gate_proj.weight"],
                f"layers.{i}.feed_forward.w2.weight": sd[p + "mlp.down_proj.weight"],
                f"layers.{i}.feed_forward.w3.weight": sd[p + "mlp.up_proj.weight"],
                f"layers.{i}.attention_norm.weight": sd[p + "input_layernorm.weight"],
                f"layers.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            }
        )
    shards = [{} for _ in range(n_shards)]
    for name, t in full.items():
        if name == "tok_embeddings.weight":
            parts = t.chunk(n_shards, dim=0 if vocab_parallel_embedding else 1)
        elif name.endswith(
            ("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")
        ):
            parts = t.chunk(n_shards, dim=0)
        elif name.endswith(("wo.weight", "w2.weight")):
            parts = t.chunk(n_shards, dim=1)
        else:
            parts = [t] * n_shards
        for shard, part in zip(shards, parts, strict=True):
            shard[name] = part.clone()
    if not vocab_parallel_embedding:
        shards[0]["rope.freqs"] = torch.zeros(4)  # LLaMA 1 stored this derived table
    return shards


@pytest.mark.parametrize("llama3", [False, True])
def test_two_shard_meta_folder(tmp_path, llama3):
    kv = 2 if llama3 else 4
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv,
        vocab_size=256,
        rms_norm_eps=1e-5,
        rope_theta=500000.0 if llama3 else 10000.0,
        max_position_embeddings=4096,
    )
    hf = transformers.LlamaForCausalLM(config).float().eval()
    folder = tmp_path / "meta"
    folder.mkdir()
    params = {
        "dim": 64,
        "n_layers": 2,
        "n_heads": 4,
        "multiple_of": 64,
        "norm_eps": 1e-5,
        "vocab_size": 256 if llama3 else -1,
    }
    if llama3:
        params.update(n_kv_heads=2, rope_theta=500000.0)
    (folder / "params.json").write_text(json.dumps(params))
    for i, shard in enumerate(_meta_shards(hf, 2, vocab_parallel_embedding=llama3)):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    (folder / "tokenizer.model").write_bytes(b"carried along")

    assert main(["convert", str(folder), str(tmp_path / "herd")]) == 0
    assert (tmp_path / "herd" / "tokenizer.model").read_bytes() == b"carried along"
    model = herd.load(tmp_path / "herd")
    assert model.config.n_kv_heads == kv and model.config.ffn_dim == 192
    assert model.config.max_seq_len == (8192 if llama3 else 4096)
    tokens = torch.randint(0, 256, (1, 30))
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4


def test_unpicklable_shard_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 1, "n_heads": 4}))
    torch.save({"x": Evil()}, folder / "consolidated.00.pth")
    with pytest.raises(herd.HerdError, match="unreadable PyTorch checkpoint"):
        herd.load(folder)
