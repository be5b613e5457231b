"""Hugging Face Llama 3.2 Vision folders (MllamaForConditionalGeneration), both ways.

transformers numbers the decoder's layers as one stack in which the cross-attention layers stand
at `text_config.cross_attention_layers` (3, 8, ..., 38 of 40 in the 11B); herd keeps the text
blocks as `layers.{i}` (a Llama checkpoint's names) and the others as `cross_layers.{k}`, so layer
j of the stack is cross-attention layer k when it is the k-th listed place, else text block
j - (places before j). transformers' token embedding has the vocabulary's rows and 8 more
(<|image|> first); herd splits it into `embed` and `extra_embed`.

Tensor names: transformers 4.x wrote (and the released checkpoints use) `language_model.model.*`,
`language_model.lm_head.*`, `vision_model.*` and `multi_modal_projector.*`; transformers 5.x models
name them `model.language_model.*` and so on but save and load the older names. herd reads both
and writes the older, which every transformers version loads.

The encoder's `intermediate_layers_indices` are the layers whose inputs join the features, as
Meta's reference (`return_intermediate`) and transformers 4.x take them; herd's `feature_layers`
are the same numbers.

A folder is this format when its config.json says model_type "mllama"; herd/checkpoint/convert.py
then reads and writes it here instead of as a Llama (herd/checkpoint/hf.py, whose weight reading
and folder writing this reuses).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from herd.checkpoint import hf
from herd.checkpoint.io import DEFAULT_SHARD_BYTES, dtype_name, read_json
from herd.errors import HerdError
from herd.model.config import AR_LAYOUTS_4, ModelConfig, VisionConfig

TEXT = "language_model.model."
LM_HEAD = "language_model.lm_head.weight"
VISION = "vision_model."
PROJECTOR = "multi_modal_projector."
EMBED = TEXT + "embed_tokens.weight"
# transformers 5.x in-memory names -> the saved ones
_NEWER_PREFIXES = (
    ("model.language_model.", TEXT),
    ("model.vision_model.", VISION),
    ("model.multi_modal_projector.", PROJECTOR),
    ("lm_head.", "language_model.lm_head."),
)
# transformers always gives the text embedding this many rows past the vocabulary
EXTRA_TOKENS = 8

_CROSS_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "cross_attn.q_proj.weight",
    "attn.wk.weight": "cross_attn.k_proj.weight",
    "attn.wv.weight": "cross_attn.v_proj.weight",
    "attn.wo.weight": "cross_attn.o_proj.weight",
    "attn.q_norm.weight": "cross_attn.q_norm.weight",
    "attn.k_norm.weight": "cross_attn.k_norm.weight",
    "attn_gate": "cross_attn_attn_gate",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "ffn_gate": "cross_attn_mlp_gate",
}
_VISION_LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_norm.bias": "input_layernorm.bias",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.bias": "post_attention_layernorm.bias",
    "ffn.fc1.weight": "mlp.fc1.weight",
    "ffn.fc1.bias": "mlp.fc1.bias",
    "ffn.fc2.weight": "mlp.fc2.weight",
    "ffn.fc2.bias": "mlp.fc2.bias",
}
_VISION_KEYS = {
    "patch_embed.weight": "patch_embedding.weight",
    "class_embed": "class_embedding",
    "position.gate": "gated_positional_embedding.gate",
    "position.embed": "gated_positional_embedding.embedding",
    "position.tile_embed.weight": "gated_positional_embedding.tile_embedding.weight",
    "pre_tile.gate": "pre_tile_positional_embedding.gate",
    "pre_tile.embed.weight": "pre_tile_positional_embedding.embedding.weight",
    "post_tile.gate": "post_tile_positional_embedding.gate",
    "post_tile.embed.weight": "post_tile_positional_embedding.embedding.weight",
    "norm_pre.weight": "layernorm_pre.weight",
    "norm_pre.bias": "layernorm_pre.bias",
    "norm_post.weight": "layernorm_post.weight",
    "norm_post.bias": "layernorm_post.bias",
}


def is_mllama_folder(path: Path) -> bool:
    """A Hugging Face folder holding an MllamaForConditionalGeneration (Llama 3.2 Vision)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == "mllama"
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_hf_config(folder: Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    return read_mllama_config(read_json(path), path)


def read_hf_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config = read_hf_config(folder)
    return config, herd_state_dict(config, hf.read_hf_tensors(Path(folder)), str(folder))


def write_hf_folder(
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    dst: Path,
    tokenizer: Iterable[Path] = (),
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """A folder that transformers' MllamaForConditionalGeneration.from_pretrained loads (the
    tokenizer carried as for a Llama, herd/checkpoint/hf.py)."""
    tensors = hf_tensors(config, state_dict)
    return hf.write_hf_folder(
        config, state_dict, dst, tokenizer, overwrite, max_shard_bytes, tensors, hf_config_dict
    )


def tensor_names(config: ModelConfig) -> dict[str, str]:
    """herd name -> transformers' (saved) name, for every tensor but the split embedding."""
    v = config.vision
    names = {"norm.weight": TEXT + "norm.weight", "output.weight": LM_HEAD}
    places = set(v.cross_attention_layers)
    text_block = cross = 0
    for j in range(config.n_layers + len(places)):
        if j in places:
            prefix, keys, cross = f"cross_layers.{cross}.", _CROSS_KEYS, cross + 1
        else:
            prefix, keys, text_block = f"layers.{text_block}.", hf._LAYER_KEYS, text_block + 1
        names.update({prefix + k: f"{TEXT}layers.{j}.{name}" for k, name in keys.items()})
    names.update({f"vision.{k}": VISION + name for k, name in _VISION_KEYS.items()})
    for stack, hf_stack, count in (
        ("layers", "transformer", v.n_layers),
        ("global_layers", "global_transformer", v.n_global_layers),
    ):
        keys = dict(_VISION_LAYER_KEYS)
        if stack == "global_layers":
            keys.update({"attn_gate": "gate_attn", "ffn_gate": "gate_ffn"})
        for i in range(count):
            names.update(
                {
                    f"vision.{stack}.{i}.{k}": f"{VISION}{hf_stack}.layers.{i}.{n}"
                    for k, n in keys.items()
                }
            )
    names["vision.projector.weight"] = PROJECTOR + "weight"
    names["vision.projector.bias"] = PROJECTOR + "bias"
    return names


def herd_state_dict(
    config: ModelConfig, raw: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """transformers' tensors (either naming) in herd's names; unknown or missing ones are errors."""
    tensors = {}
    for name, t in raw.items():
        for newer, saved in _NEWER_PREFIXES:
            if name.startswith(newer):
                name = saved + name[len(newer) :]
                break
        if not name.endswith("rotary_emb.inv_freq"):  # derived; herd recomputes RoPE
            tensors[name] = t
    if EMBED not in tensors:
        raise HerdError(f"{source}: missing tensor '{EMBED}'")
    embed = tensors.pop(EMBED)
    vocab = config.vocab_size
    state = {"embed.weight": embed[:vocab], "extra_embed.weight": embed[vocab:]}
    for herd_name, hf_name in tensor_names(config).items():
        if hf_name not in tensors:
            raise HerdError(f"{source}: missing tensor '{hf_name}' for a Llama 3.2 Vision model")
        state[herd_name] = tensors.pop(hf_name)
    if tensors:
        raise HerdError(
            f"{source}: unexpected tensor '{sorted(tensors)[0]}' for a Llama 3.2 Vision model"
        )
    return state


def hf_tensors(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """herd's tensors in transformers' saved names."""
    state = dict(state_dict)
    out = {EMBED: torch.cat([state.pop("embed.weight"), state.pop("extra_embed.weight")])}
    out.update({hf_name: state.pop(name) for name, hf_name in tensor_names(config).items()})
    return out


# --- config -----------------------------------------------------------------------------------


def read_mllama_config(data: dict, path: Path) -> ModelConfig:
    """A `ModelConfig` from an MllamaForConditionalGeneration config.json (defaults as
    transformers' for keys it leaves out)."""
    text, vision = data.get("text_config") or {}, data.get("vision_config") or {}
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise HerdError(f"{path}: 'text_config' and 'vision_config' must be objects")
    if text.get("hidden_act", "silu") != "silu" or vision.get("hidden_act", "gelu") != "gelu":
        raise HerdError(f"{path}: expected hidden_act 'silu' (text) and 'gelu' (vision)")
    if text.get("tie_word_embeddings", data.get("tie_word_embeddings")):
        raise HerdError(f"{path}: a Llama 3.2 Vision model does not tie its embeddings")
    places = text.get("cross_attention_layers") or [3, 8, 13, 18, 23, 28, 33, 38]
    vocab = text.get("vocab_size", 128256)
    image_token = data.get("image_token_index", data.get("image_token_id", 128256))
    if image_token != vocab:
        raise HerdError(
            f"{path}: image_token_index {image_token}; herd reads <|image|> as the first id past "
            f"the vocabulary ({vocab})"
        )
    size, patch = vision.get("image_size", 448), vision.get("patch_size", 14)
    if isinstance(size, list) and len(set(size)) == 1:
        size = size[0]
    if isinstance(patch, list) and len(set(patch)) == 1:
        patch = patch[0]
    dim = vision.get("hidden_size", 1280)
    features = vision.get("intermediate_layers_indices") or [3, 7, 15, 23, 30]
    output_dim = vision.get("vision_output_dim", 7680)
    if output_dim != dim * (len(features) + 1):
        raise HerdError(
            f"{path}: vision_output_dim {output_dim} is not hidden_size {dim} x "
            f"({len(features)} intermediate layers + 1)"
        )
    vision_config = VisionConfig(
        dim=dim,
        n_layers=vision.get("num_hidden_layers", 32),
        n_global_layers=vision.get("num_global_layers", 8),
        n_heads=vision.get("attention_heads", vision.get("num_attention_heads", 16)),
        ffn_dim=vision.get("intermediate_size", 5120),
        image_size=size,
        patch_size=patch,
        channels=vision.get("num_channels", 3),
        max_tiles=vision.get("max_num_tiles", 4),
        aspect_ratios=vision.get("supported_aspect_ratios") or AR_LAYOUTS_4,
        feature_layers=features,
        norm_eps=float(vision.get("norm_eps", 1e-5)),
        cross_attention_layers=places,
        extra_tokens=EXTRA_TOKENS,
    )
    heads = text.get("num_attention_heads", 32)
    theta, scaling = hf._rope_from_hf({"rope_theta": 500000.0, **text}, path)
    try:
        return ModelConfig(
            dim=text.get("hidden_size", 4096),
            n_layers=text.get("num_hidden_layers", 40) - len(places),
            n_heads=heads,
            n_kv_heads=text.get("num_key_value_heads") or heads,
            vocab_size=vocab,
            ffn_dim=text.get("intermediate_size", 14336),
            norm_eps=float(text.get("rms_norm_eps", 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=text.get("max_position_embeddings", 131072),
            vision=vision_config,
        )
    except HerdError as e:
        raise HerdError(str(e).replace("config:", f"{path}:", 1)) from None


def hf_config_dict(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json of an MllamaForConditionalGeneration."""
    v = config.vision
    llama = hf.hf_config_dict(config.replace(vision=None), dtype)
    text = {k: llama[k] for k in _TEXT_KEYS}
    text.update(
        model_type="mllama_text_model",
        num_hidden_layers=config.n_layers + len(v.cross_attention_layers),
        cross_attention_layers=list(v.cross_attention_layers),
        # transformers' default (128004) lies past a small vocabulary; the pad id only keeps a
        # row out of training there
        pad_token_id=None,
    )
    vision = {
        "model_type": "mllama_vision_model",
        "hidden_size": v.dim,
        "num_hidden_layers": v.n_layers,
        "num_global_layers": v.n_global_layers,
        "attention_heads": v.n_heads,
        "intermediate_size": v.ffn_dim,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.channels,
        "max_num_tiles": v.max_tiles,
        "supported_aspect_ratios": [list(a) for a in v.aspect_ratios],
        "intermediate_layers_indices": list(v.feature_layers),
        "vision_output_dim": v.feature_dim,
        "norm_eps": v.norm_eps,
        "hidden_act": "gelu",
    }
    return {
        "architectures": ["MllamaForConditionalGeneration"],
        "model_type": "mllama",
        "image_token_index": config.image_token_id,
        "text_config": text,
        "vision_config": vision,
        "dtype": dtype_name(dtype),
        "torch_dtype": dtype_name(dtype),
    }


_TEXT_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "hidden_act",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
)
