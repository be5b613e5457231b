"""`herd info`: the architecture and exact parameter count of a preset or checkpoint.

Counts come from building the model on the meta device (`ModelConfig.num_params`): no memory is
allocated, so even llama3-405b is instant, and the count is the model's, not a formula's.
"""

from __future__ import annotations

import json
from pathlib import Path

from herd.errors import HerdError
from herd.model.config import ModelConfig
from herd.model.presets import PRESETS, preset


def resolve_config(target: str) -> ModelConfig:
    """A preset by name, else a checkpoint path's config."""
    if target in PRESETS:
        return preset(target)
    if Path(target).exists():
        from herd.checkpoint.convert import read_config

        return read_config(target)
    raise HerdError(
        f"'{target}' is neither a preset ({', '.join(PRESETS)}) nor an existing checkpoint path"
    )


def describe(config: ModelConfig) -> dict:
    s = config.rope_scaling
    out = {
        "parameters": config.num_params(),
        "layers": config.n_layers,
        "dim": config.dim,
        "heads": config.n_heads,
        "kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "ffn_dim": config.ffn_dim,
        "vocab_size": config.vocab_size,
        "norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if s is None else dict(s.__dict__),
        "context": config.max_seq_len,
        "tied_embeddings": config.tie_embeddings,
    }
    if config.vision is not None:  # only then, so text models' JSON reads as before
        out["vision"] = config.to_dict()["vision"]
    return out


def _human(n: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(name: str, d: dict) -> str:
    s = d["rope_scaling"]
    scaling = (
        "none"
        if s is None
        else f"llama3.1 (factor {s['factor']:g}, low {s['low_freq_factor']:g}, "
        f"high {s['high_freq_factor']:g}, original context {s['original_max_seq_len']})"
    )
    rows = [
        ("layers", d["layers"]),
        ("dim", d["dim"]),
        ("heads", d["heads"]),
        ("kv_heads", d["kv_heads"]),
        ("head_dim", d["head_dim"]),
        ("ffn_dim", d["ffn_dim"]),
        ("vocab_size", d["vocab_size"]),
        ("norm_eps", f"{d['norm_eps']:g}"),
        ("rope_theta", f"{d['rope_theta']:g}"),
        ("rope_scaling", scaling),
        ("context", d["context"]),
        ("tied_embeddings", "yes" if d["tied_embeddings"] else "no"),
        *_vision_rows(d.get("vision")),
        ("parameters", f"{d['parameters']:,} ({_human(d['parameters'])})"),
    ]
    return "\n".join([name, *(f"  {k:<16}{v}" for k, v in rows)])


def _vision_rows(v: dict | None) -> list[tuple[str, str]]:
    if v is None:
        return []
    encoder = (
        f"{v['dim']} wide, {v['n_layers']} + {v['n_global_layers']} gated layers, up to "
        f"{v['max_tiles']} tiles of {v['image_size']} px (patch {v['patch_size']})"
    )
    places = ", ".join(str(i) for i in v["cross_attention_layers"])
    return [("vision", encoder), ("cross_attention", f"at {places}")]


def run_info(target: str | None, as_json: bool = False, list_presets: bool = False) -> None:
    if list_presets or target is None:
        if target is None and not list_presets:
            raise HerdError("give a preset name or checkpoint path (or --list)")
        names = list(PRESETS)
        print(json.dumps(names) if as_json else "\n".join(names))
        return
    d = describe(resolve_config(target))
    print(json.dumps(d, indent=2) if as_json else format_table(target, d))
