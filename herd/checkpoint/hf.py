"""Hugging Face Llama folders: config.json (transformers 4.x and 5.x) + safetensors, both ways.

transformers 4.x writes `rope_theta` at the top level and Llama 3.1 scaling as `rope_scaling`
({"rope_type" or "type": "llama3", ...}); 5.x nests both in `rope_parameters`. herd reads either and
writes both spellings, so its exports load in either major version. HF's q/k rows already use the
half-split RoPE layout herd uses, so conversion is a pure key rename.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from herd.atomic_files import write_folder_atomically
from herd.checkpoint.io import (
    DEFAULT_SHARD_BYTES,
    INDEX_NAME,
    dtype_name,
    load_safetensors,
    read_json,
    save_safetensors,
)
from herd.errors import HerdError
from herd.model.config import ModelConfig, RopeScaling

if TYPE_CHECKING:
    from herd.tokenizer.base import Tokenizer

# herd name -> HF name; "{i}" is the layer index.
_LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
_GLOBAL_KEYS = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# A reward model's head (config.head "score") in LlamaForSequenceClassification's name.
SCORE_KEY = "score.weight"
SEQUENCE_CLASSIFIER = "LlamaForSequenceClassification"
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_HF_TO_HERD_LAYER = {v: k for k, v in _LAYER_KEYS.items()}
_HF_TO_HERD_GLOBAL = {v: k for k, v in _GLOBAL_KEYS.items()}


def herd_to_hf_name(name: str) -> str:
    if name in _GLOBAL_KEYS:
        return _GLOBAL_KEYS[name]
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{_LAYER_KEYS[rest]}"


def hf_to_herd_name(name: str, source: str) -> str | None:
    """herd name of an HF tensor; None for derived buffers that herd recomputes."""
    if name in _HF_TO_HERD_GLOBAL:
        return _HF_TO_HERD_GLOBAL[name]
    if name == SCORE_KEY:
        return "output.weight"
    m = _HF_LAYER.fullmatch(name)
    if m and m.group(2) in _HF_TO_HERD_LAYER:
        return f"layers.{m.group(1)}.{_HF_TO_HERD_LAYER[m.group(2)]}"
    if name.endswith("rotary_emb.inv_freq"):
        return None
    raise HerdError(f"{source}: unexpected tensor '{name}' for a Llama model")


# --- config -----------------------------------------------------------------------------------


def _rope_from_hf(data: dict, path: Path) -> tuple[float, RopeScaling | None]:
    params = data.get("rope_parameters")  # transformers 5.x
    if isinstance(params, dict):
        theta = params.get("rope_theta", data.get("rope_theta", 10000.0))
        scaling = params if params.get("rope_type", "default") != "default" else None
    else:  # transformers 4.x
        theta = data.get("rope_theta", 10000.0)
        scaling = data.get("rope_scaling")
    if not scaling:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise HerdError(f"{path}: rope type '{kind}' is not supported (expected 'llama3' or none)")
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_seq_len=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise HerdError(f"{path}: rope scaling is missing field {e}") from None


def read_hf_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    data = read_json(path)
    model_type = data.get("model_type")
    if model_type != "llama":
        raise HerdError(f"{path}: model_type is {model_type!r}, expected 'llama'")
    for flag in ("attention_bias", "mlp_bias"):
        if data.get(flag):
            raise HerdError(f"{path}: '{flag}: true' is not a Llama architecture herd supports")
    if data.get("hidden_act", "silu") != "silu":
        raise HerdError(f"{path}: hidden_act {data['hidden_act']!r}, expected 'silu'")
    try:
        dim, heads = data["hidden_size"], data["num_attention_heads"]
        values = dict(
            dim=dim,
            n_layers=data["num_hidden_layers"],
            n_heads=heads,
            n_kv_heads=data.get("num_key_value_heads") or heads,
            vocab_size=data["vocab_size"],
            ffn_dim=data["intermediate_size"],
        )
    except KeyError as e:
        raise HerdError(f"{path}: missing key {e}") from None
    head_dim = data.get("head_dim")
    if head_dim is not None and isinstance(dim, int) and head_dim * heads != dim:
        raise HerdError(f"{path}: head_dim {head_dim} x {heads} heads != hidden_size {dim}")
    theta, scaling = _rope_from_hf(data, path)
    if SEQUENCE_CLASSIFIER in (data.get("architectures") or []):
        labels = len(data.get("id2label") or {}) or data.get("num_labels", 2)
        if labels != 1:
            raise HerdError(
                f"{path}: a {SEQUENCE_CLASSIFIER} with {labels} labels; herd reads reward models "
                "(one label, a scalar score)"
            )
        values["head"] = "score"
    values.update(
        norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=None if scaling is None else dataclasses.asdict(scaling),
        max_seq_len=data.get("max_position_embeddings", 2048),
        tie_embeddings=bool(data.get("tie_word_embeddings", False)),
    )
    return ModelConfig.from_dict(values, source=str(path))


def _carried_tokenizer(tokenizer_files: list[Path]) -> Tokenizer | None:
    """The tokenizer the carried files make up (tokenizer.json first, as herd.load_tokenizer)."""
    from herd.tokenizer import TOKENIZER_FILE_NAMES, load_tokenizer

    by_name = {Path(f).name: Path(f) for f in tokenizer_files}
    for name in TOKENIZER_FILE_NAMES:
        if name in by_name:
            return load_tokenizer(by_name[name])
    return None


def _special_ids(tok: Tokenizer) -> dict:
    """bos_token_id / eos_token_id from the tokenizer being carried (transformers would otherwise
    assume Llama 2's 1 and 2); eos lists every stop id, as Meta's Llama 3 configs do."""
    stops = tok.stop_ids or ([tok.eos_id] if tok.eos_id is not None else [])
    out = {"bos_token_id": tok.bos_id}
    if stops:
        out["eos_token_id"] = stops[0] if len(stops) == 1 else list(stops)
    return out


def _score_config(pad_id: int | None) -> dict:
    """What makes transformers build a reward model: one label (a scalar, regression) read at
    each row's last token that is not `pad_token_id` (herd/posttrain/reward.py)."""
    out = {
        "architectures": [SEQUENCE_CLASSIFIER],
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
    }
    if pad_id is not None:
        out["pad_token_id"] = pad_id
    return out


def hf_config_dict(config: ModelConfig, dtype: torch.dtype) -> dict:
    rope: dict = {"rope_type": "default", "rope_theta": config.rope_theta}
    legacy_scaling = None
    if config.rope_scaling is not None:
        s = config.rope_scaling
        legacy_scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_seq_len,
        }
        rope = {**legacy_scaling, "rope_theta": config.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rope_parameters": rope,  # transformers >= 5
        "rope_theta": config.rope_theta,  # transformers 4.x
        "rope_scaling": legacy_scaling,  # transformers 4.x
        "dtype": dtype_name(dtype),
        "torch_dtype": dtype_name(dtype),
    }


# --- weights ----------------------------------------------------------------------------------


def _hf_weight_files(folder: Path) -> list[Path]:
    if (folder / INDEX_NAME).exists() or list(folder.glob("*.safetensors")):
        from herd.checkpoint.io import safetensors_files

        return safetensors_files(folder)
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise HerdError(f"{folder}: no *.safetensors or pytorch_model*.bin weights found")
    return bins


def read_hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder, by its transformers name (safetensors or .bin)."""
    files = _hf_weight_files(folder)
    if files[0].suffix != ".bin":
        return load_safetensors(files)
    raw: dict[str, torch.Tensor] = {}
    for f in files:
        try:  # weights_only: never unpickle arbitrary objects from a downloaded file
            raw.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:
            raise HerdError(f"{f}: unreadable PyTorch weights ({e})") from None
    return raw


def read_hf_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config = read_hf_config(folder)
    raw = read_hf_tensors(folder)
    state_dict = {}
    for name, t in raw.items():
        herd_name = hf_to_herd_name(name, str(folder))
        if herd_name is not None:
            state_dict[herd_name] = t
    return config, state_dict


def write_hf_folder(
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    dst: Path,
    tokenizer: Iterable[Path] = (),
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    tensors: dict[str, torch.Tensor] | None = None,
    config_dict: Callable[[ModelConfig, torch.dtype], dict] | None = None,
) -> Path:
    """Write a folder that transformers' LlamaForCausalLM.from_pretrained and AutoTokenizer load
    (a reward model, config.head "score": LlamaForSequenceClassification with one label).

    The carried tokenizer is rewritten as the files transformers reads (herd/tokenizer/hf_export.py)
    so that it encodes as herd does; a `tokenizer.model` is copied beside them as well.

    Another architecture's writer (herd/checkpoint/mllama.py) passes its `tensors` in
    transformers' names and its `config_dict` (config, dtype -> config.json's object)."""
    from herd.tokenizer.hf_export import UnsupportedTokenizer, hf_tokenizer_files, write_text_files

    if tensors is None:
        tensors = {herd_to_hf_name(k): v for k, v in state_dict.items()}
    if config.head == "score":
        tensors[SCORE_KEY] = tensors.pop("lm_head.weight")
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    dtype = state_dict["embed.weight"].dtype
    tokenizer = list(tokenizer)
    tok = _carried_tokenizer(tokenizer)
    tokenizer_texts: dict[str, str] = {}
    if tok is not None:
        try:  # built before the folder is started: a Llama 3 vocabulary takes a few seconds
            tokenizer_texts = hf_tokenizer_files(tok, model_max_length=config.max_seq_len)
        except UnsupportedTokenizer as e:  # the weights are still worth converting
            print(f"warning: {e}; its files are copied as they are", file=sys.stderr)

    def fill(tmp: Path) -> None:
        cfg = (config_dict or hf_config_dict)(config, dtype)
        if tok is not None:
            cfg.update(_special_ids(tok))
            if "text_config" in cfg:  # a composite model's decoder reads them there
                cfg["text_config"].update(_special_ids(tok))
        if config.head == "score":
            from herd.tokenizer.chat import conversation_pad_id

            cfg.update(_score_config(None if tok is None else conversation_pad_id(tok)))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        save_safetensors(tensors, tmp, max_shard_bytes)
        for f in tokenizer:
            if Path(f).name not in tokenizer_texts:  # those are rewritten for transformers
                shutil.copy2(f, tmp / Path(f).name)
        write_text_files(tmp, tokenizer_texts)

    return write_folder_atomically(Path(dst), fill, overwrite)
