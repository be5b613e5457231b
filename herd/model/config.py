"""The model architecture: `ModelConfig`, with validation and exact parameter and FLOP counts.

A `ModelConfig` fully describes a Llama-family decoder (LLaMA, Llama 2, Llama 3.x): every preset,
checkpoint folder and converter goes through it. Field help strings double as documentation for the
CLI. Unknown keys and impossible shapes are rejected with a `HerdError` naming the source and field,
so a typo in a config never silently becomes a default.

Parameters and FLOPs are counted from the shapes alone (no torch, no model built), so `herd info`
and the scaling planner answer instantly for any size; a test checks the count against the module
tree `Transformer` builds.

Training FLOPs per token (Kaplan et al. 2020, Chinchilla appendix F, as PaLM's MFU counts them):
    6 * N_dense          forward (2 per weight per token) + backward (4), over every matrix that
                         multiplies activations: the blocks and the output projection; the
                         embedding lookup is a gather, not a matmul, so untied embedding
                         weights are left out
    + 12 * L * d * T     attention scores and values: QK^T and AV, 2 * 2 * T * d per token and
                         layer forward, times 3 for forward + backward (causal masking is not
                         subtracted, as is customary)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError

HEADS = ("lm", "score")


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 RoPE frequency scaling (long-context extension, Llama 3 paper section 3.4).

    Wavelengths longer than `original_max_seq_len / low_freq_factor` are divided by `factor`; shorter
    than `original_max_seq_len / high_freq_factor` are kept; in between they are interpolated smoothly.
    """

    factor: float = field(default=8.0, metadata={"help": "divisor for low frequencies"})
    low_freq_factor: float = field(default=1.0, metadata={"help": "low-frequency cutoff factor"})
    high_freq_factor: float = field(default=4.0, metadata={"help": "high-frequency cutoff factor"})
    original_max_seq_len: int = field(
        default=8192, metadata={"help": "context length the base model was trained at"}
    )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family decoder-only Transformer."""

    dim: int = field(metadata={"help": "model (residual stream) width"})
    n_layers: int = field(metadata={"help": "number of Transformer blocks"})
    n_heads: int = field(metadata={"help": "number of query heads"})
    n_kv_heads: int = field(metadata={"help": "number of key/value heads (GQA; = n_heads for MHA)"})
    vocab_size: int = field(metadata={"help": "number of token embeddings"})
    ffn_dim: int = field(metadata={"help": "SwiGLU hidden width"})
    norm_eps: float = field(default=1e-5, metadata={"help": "RMSNorm epsilon"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency"})
    rope_scaling: RopeScaling | None = field(
        default=None, metadata={"help": "Llama 3.1 RoPE frequency scaling, or none"}
    )
    max_seq_len: int = field(default=2048, metadata={"help": "maximum context length"})
    tie_embeddings: bool = field(
        default=False, metadata={"help": "share the output projection with the token embeddings"}
    )
    head: str = field(
        default="lm",
        metadata={
            "help": "output layer: lm (next-token logits over the vocabulary) or score (one "
            "scalar per position: a reward model, herd/posttrain/reward.py)"
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self, source: str = "config") -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise HerdError(
                    f"{source}: field '{name}' is {value!r}, expected a positive integer"
                )
        if self.dim % self.n_heads:
            raise HerdError(f"{source}: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise HerdError(
                f"{source}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise HerdError(f"{source}: head_dim {self.head_dim} must be even for RoPE")
        if self.max_seq_len <= 0:
            raise HerdError(f"{source}: field 'max_seq_len' must be positive")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise HerdError(f"{source}: 'norm_eps' and 'rope_theta' must be positive")
        if self.head not in HEADS:
            raise HerdError(f"{source}: field 'head' is {self.head!r}, expected lm or score")
        if self.head == "score" and self.tie_embeddings:
            # the score head is a [1, dim] matrix; it cannot be the [vocab, dim] embedding table
            raise HerdError(f"{source}: head 'score' cannot tie the output to the embeddings")

    @property
    def output_size(self) -> int:
        """Rows of the output projection: the vocabulary, or 1 for a reward model's score."""
        return self.vocab_size if self.head == "lm" else 1

    def num_params(self) -> int:
        """Exact parameter count: embeddings, per block the attention projections (GQA: K and V
        have n_kv_heads), the SwiGLU's three matrices and two RMSNorm gains, the final norm and an
        untied output projection (one row for a reward model's score head)."""
        d, h = self.dim, self.head_dim
        attention = d * self.n_heads * h * 2 + d * self.n_kv_heads * h * 2
        block = attention + 3 * d * self.ffn_dim + 2 * d
        output = 0 if self.tie_embeddings else self.output_size * d
        return self.vocab_size * d + self.n_layers * block + d + output

    def dense_params(self) -> int:
        """Parameters that multiply activations: everything but an untied embedding table."""
        total = self.num_params()
        return total if self.tie_embeddings else total - self.vocab_size * self.dim

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at context `seq_len`: 6 N_dense + 12 L d T (module docstring)."""
        return 6.0 * self.dense_params() + 12.0 * self.n_layers * self.dim * seq_len

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.head == "lm":
            # Written only for reward models, so every language model's config.json (and the
            # fingerprints computed from it) reads as before the field existed.
            del out["head"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a plain dict (as stored in config.json), rejecting unknown or missing keys."""
        if not isinstance(data, dict):
            raise HerdError(f"{source}: expected a JSON object for the model config")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise HerdError(
                f"{source}: unknown key '{unknown[0]}' (expected one of: {', '.join(known)})"
            )
        required = [n for n, f in known.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise HerdError(f"{source}: missing key '{missing[0]}'")
        values = dict(data)
        scaling = values.get("rope_scaling")
        if scaling is not None:
            if not isinstance(scaling, dict):
                raise HerdError(f"{source}: 'rope_scaling' must be an object or null")
            fields = {f.name for f in dataclasses.fields(RopeScaling)}
            bad = sorted(set(scaling) - fields)
            if bad:
                raise HerdError(
                    f"{source}: unknown key 'rope_scaling.{bad[0]}' "
                    f"(expected one of: {', '.join(sorted(fields))})"
                )
            values["rope_scaling"] = RopeScaling(**scaling)
        for name, f in known.items():
            if name in values and f.type in ("int", int) and isinstance(values[name], float):
                if not values[name].is_integer():
                    raise HerdError(f"{source}: field '{name}' is {values[name]}, expected integer")
                values[name] = int(values[name])
        try:
            config = cls(**values)
        except HerdError as e:
            raise HerdError(str(e).replace("config:", f"{source}:", 1)) from None
        except TypeError as e:
            raise HerdError(f"{source}: {e}") from None
        return config

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def llama_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU width as Meta's reference code derives it: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)
