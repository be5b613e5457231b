"""Named architectures: the published LLaMA, Llama 2 and Llama 3.x shapes (Llama 3.2 Vision too),
plus a CPU demo.

Each preset is a small function returning a `ModelConfig`. FFN widths are derived exactly as Meta's
reference code does (`llama_ffn_dim`) from `multiple_of` and `ffn_dim_multiplier` in the released
params.json files, so parameter counts match the released checkpoints to the unit.
"""

from __future__ import annotations

from collections.abc import Callable

from herd.errors import HerdError
from herd.model.config import ModelConfig, RopeScaling, VisionConfig, llama_ffn_dim

# Llama 3.1 long-context scaling as released (params.json use_scaled_rope=true).
LLAMA31_SCALING = RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192
)
# Llama 3.2 1B/3B use the same scheme with factor 32.
LLAMA32_SCALING = RopeScaling(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192
)


def _llama1(dim: int, n_layers: int, n_heads: int) -> ModelConfig:
    # LLaMA (Touvron et al. 2023), Table 2; vocab 32K sentencepiece, 2K context, eps 1e-6.
    return ModelConfig(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        vocab_size=32000,
        ffn_dim=llama_ffn_dim(dim, 256),
        norm_eps=1e-6,
        max_seq_len=2048,
    )


def _llama2(dim: int, n_layers: int, n_heads: int, n_kv_heads: int | None = None, **ffn):
    # Llama 2: 4K context, eps 1e-5; the 70B adds grouped-query attention (8 KV heads).
    return ModelConfig(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads or n_heads,
        vocab_size=32000,
        ffn_dim=llama_ffn_dim(dim, ffn.get("multiple_of", 256), ffn.get("multiplier")),
        norm_eps=1e-5,
        max_seq_len=4096,
    )


def _llama3(
    dim: int,
    n_layers: int,
    n_heads: int,
    multiple_of: int,
    multiplier: float,
    scaling: RopeScaling | None = None,
    tie: bool = False,
) -> ModelConfig:
    # Llama 3: 128K tiktoken vocabulary, GQA with 8 KV heads, RoPE theta 500,000.
    return ModelConfig(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=8,
        vocab_size=128256,
        ffn_dim=llama_ffn_dim(dim, multiple_of, multiplier),
        norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=scaling,
        max_seq_len=131072 if scaling else 8192,
        tie_embeddings=tie,
    )


def _llama32_vision() -> ModelConfig:
    # Llama 3.2 11B Vision: Llama 3.1 8B's decoder (its 32 blocks are the text model, kept as
    # they were) with 8 gated cross-attention layers and a 1280-wide encoder on 560-pixel tiles
    # (VisionConfig's defaults), 10,670,220,835 parameters as released.
    return _llama3(4096, 32, 32, 1024, 1.3, LLAMA31_SCALING).replace(vision=VisionConfig())


def demo() -> ModelConfig:
    """A 15M-parameter model shaped like llama2.c's stories15M (tied classifier), for CPU."""
    return ModelConfig(
        dim=288,
        n_layers=6,
        n_heads=6,
        n_kv_heads=6,
        vocab_size=32000,
        ffn_dim=768,
        norm_eps=1e-5,
        max_seq_len=256,
        tie_embeddings=True,
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "llama-7b": lambda: _llama1(4096, 32, 32),
    "llama-13b": lambda: _llama1(5120, 40, 40),
    "llama-33b": lambda: _llama1(6656, 60, 52),
    "llama-65b": lambda: _llama1(8192, 80, 64),
    "llama2-7b": lambda: _llama2(4096, 32, 32),
    "llama2-13b": lambda: _llama2(5120, 40, 40),
    "llama2-70b": lambda: _llama2(8192, 80, 64, 8, multiple_of=4096, multiplier=1.3),
    "llama3-8b": lambda: _llama3(4096, 32, 32, 1024, 1.3),
    "llama3-70b": lambda: _llama3(8192, 80, 64, 4096, 1.3),
    "llama3-405b": lambda: _llama3(16384, 126, 128, 4096, 1.2, LLAMA31_SCALING),
    "llama3.2-1b": lambda: _llama3(2048, 16, 32, 256, 1.5, LLAMA32_SCALING, tie=True),
    "llama3.2-3b": lambda: _llama3(3072, 28, 24, 256, 1.0, LLAMA32_SCALING, tie=True),
    "llama3.2-11b-vision": _llama32_vision,
    "demo": demo,
}


def preset(name: str) -> ModelConfig:
    """The `ModelConfig` of a named architecture (see `PRESETS`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise HerdError(
            f"unknown preset '{name}' (expected one of: {', '.join(PRESETS)})"
        ) from None
