"""Meta's original release folders: params.json + consolidated.NN.pth model-parallel shards.

Each shard holds one model-parallel rank's slice (fairscale layers): column-parallel weights (wq, wk,
wv, w1, w3, output) are split along rows, row-parallel ones (wo, w2) along columns, norms are
replicated, and the token embedding is split along the embedding dimension in LLaMA/Llama 2
(ParallelEmbedding) but along the vocabulary in Llama 3 (VocabParallelEmbedding). Shards are loaded
with `weights_only=True`, never unpickling arbitrary objects, and memory-mapped.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from herd.checkpoint.io import read_json
from herd.errors import HerdError
from herd.model.config import ModelConfig, llama_ffn_dim
from herd.model.presets import LLAMA31_SCALING
from herd.model.rope import interleaved_to_half

_ROW_SPLIT = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
    "output.weight",
)
_COL_SPLIT = ("attention.wo.weight", "feed_forward.w2.weight")
_NAMES = {
    "tok_embeddings.weight": "embed.weight",
    "norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_LAYER_NAMES = {
    "attention_norm.weight": "attn_norm.weight",
    "attention.wq.weight": "attn.wq.weight",
    "attention.wk.weight": "attn.wk.weight",
    "attention.wv.weight": "attn.wv.weight",
    "attention.wo.weight": "attn.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn.w1.weight",
    "feed_forward.w2.weight": "ffn.w2.weight",
    "feed_forward.w3.weight": "ffn.w3.weight",
}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def is_meta_folder(path: Path) -> bool:
    return (path / "params.json").is_file()


def _shards(folder: Path) -> list[Path]:
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise HerdError(f"{folder}: params.json found but no consolidated.NN.pth shards")
    return shards


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise HerdError(f"{path}: unreadable PyTorch checkpoint ({e})") from None


def _merge(name: str, parts: list[torch.Tensor], vocab_size: int) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    if name == "tok_embeddings.weight":
        return torch.cat(parts, dim=1 if parts[0].shape[0] == vocab_size else 0)
    if name.endswith(_ROW_SPLIT):
        return torch.cat(parts, dim=0)
    if name.endswith(_COL_SPLIT):
        return torch.cat(parts, dim=1)
    return parts[0]  # replicated (norms)


def _config(params: dict, path: Path, weights: dict[str, torch.Tensor]) -> ModelConfig:
    try:
        dim, n_layers, n_heads = params["dim"], params["n_layers"], params["n_heads"]
    except KeyError as e:
        raise HerdError(f"{path}: missing key {e}") from None
    vocab = weights["tok_embeddings.weight"].shape[0]
    if params.get("vocab_size", -1) not in (-1, vocab):
        raise HerdError(
            f"{path}: vocab_size {params['vocab_size']} but tok_embeddings has {vocab} rows"
        )
    ffn_dim = weights["layers.0.feed_forward.w1.weight"].shape[0]
    derived = llama_ffn_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    if "multiple_of" in params and ffn_dim != derived:
        raise HerdError(f"{path}: multiple_of/ffn_dim_multiplier give {derived}, weights {ffn_dim}")
    theta = float(params.get("rope_theta", 10000.0))
    scaling = None
    if params.get("use_scaled_rope"):
        # Meta's llama-models uses factor 32 for the 3.2 1B/3B text models and 8 for 3.1.
        factor = params.get("rope_scaling_factor")
        if factor is None:
            factor = 32.0 if (dim in (2048, 3072) and vocab == 128256) else 8.0
        scaling = dataclasses.replace(LLAMA31_SCALING, factor=float(factor))
    if "max_seq_len" in params:
        max_seq_len = params["max_seq_len"]
    elif scaling is not None:
        max_seq_len = 131072
    elif theta == 500000.0:
        max_seq_len = 8192
    else:
        max_seq_len = 2048 if params.get("norm_eps") == 1e-6 else 4096
    tied = "output.weight" in weights and torch.equal(
        weights["output.weight"], weights["tok_embeddings.weight"]
    )
    values = dict(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=params.get("n_kv_heads") or n_heads,
        vocab_size=vocab,
        ffn_dim=ffn_dim,
        norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=None if scaling is None else dataclasses.asdict(scaling),
        max_seq_len=max_seq_len,
        tie_embeddings=tied or "output.weight" not in weights,
    )
    return ModelConfig.from_dict(values, source=str(path))


def read_meta_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    params_path = folder / "params.json"
    params = read_json(params_path)
    shards = [_load_shard(p) for p in _shards(folder)]
    vocab = params.get("vocab_size", -1)
    if vocab == -1:
        vocab = max(s["tok_embeddings.weight"].shape[0] for s in shards)
    merged: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        if name == "rope.freqs":  # LLaMA 1 stored the (derived) rotary table
            continue
        parts = []
        for i, s in enumerate(shards):
            if name not in s:
                raise HerdError(f"{folder}: tensor '{name}' missing from shard {i}")
            parts.append(s[name])
        merged[name] = _merge(name, parts, vocab)
    if "layers.0.feed_forward.w1.weight" not in merged or "tok_embeddings.weight" not in merged:
        raise HerdError(f"{folder}: shards do not hold a Llama model (no tok_embeddings/layers)")
    config = _config(params, params_path, merged)
    state_dict = {}
    for name, t in merged.items():
        if name in _NAMES:
            state_dict[_NAMES[name]] = t
            continue
        m = _LAYER.fullmatch(name)
        if not m or m.group(2) not in _LAYER_NAMES:
            raise HerdError(f"{folder}: unexpected tensor '{name}' for a Llama model")
        state_dict[f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"] = t
    for i in range(config.n_layers):
        wq, wk = f"layers.{i}.attn.wq.weight", f"layers.{i}.attn.wk.weight"
        if wq in state_dict and wk in state_dict:
            state_dict[wq] = interleaved_to_half(state_dict[wq], config.n_heads)
            state_dict[wk] = interleaved_to_half(state_dict[wk], config.n_kv_heads)
    return config, state_dict
