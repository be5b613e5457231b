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

A vision model (Llama 3.2 Vision, `ModelConfig.vision`) is the text decoder plus a `VisionConfig`:
an image encoder and gated cross-attention layers between the decoder's blocks
(herd/model/multimodal.py). Its parameters are counted exactly, from the shapes as well;
`flops_per_token` applies the text formula to all of them, a stand-in until training on images.
A speech model (`ModelConfig.speech`, herd/model/speech_config.py) adds a speech encoder and
adapter whose frames enter the decoder as tokens, counted the same way. A video model
(`ModelConfig.video`, herd/model/video_config.py) adds a temporal aggregator and video
cross-attention layers to a vision model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError
from herd.model.speech_config import SpeechConfig, speech_from_dict
from herd.model.video_config import VideoConfig, video_from_dict

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


# Llama 3.2 Vision's tile layouts (rows x columns of tiles) for at most 4 tiles, in the order
# that numbers them: aspect-ratio id i + 1 is AR_LAYOUTS_4[i]; id 0 is an absent (padding) image.
AR_LAYOUTS_4 = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))


@dataclass(frozen=True)
class VisionConfig:
    """The image side of a Llama 3.2 Vision model (Meta 2024; "mllama" in transformers).

    A ViT-H/14-style encoder reads each image as up to `max_tiles` square tiles of `image_size`
    pixels: `n_layers` layers, then `n_global_layers` gated layers, both over all tiles of an
    image; the inputs of `feature_layers` are concatenated with the final output and projected
    to the text width. The text decoder reads them through gated cross-attention layers placed
    at `cross_attention_layers`.
    """

    dim: int = field(default=1280, metadata={"help": "encoder width"})
    n_layers: int = field(default=32, metadata={"help": "encoder layers over all tiles"})
    n_global_layers: int = field(default=8, metadata={"help": "gated layers after them"})
    n_heads: int = field(default=16, metadata={"help": "encoder attention heads"})
    ffn_dim: int = field(default=5120, metadata={"help": "encoder MLP hidden width (GELU)"})
    image_size: int = field(default=560, metadata={"help": "tile side in pixels"})
    patch_size: int = field(default=14, metadata={"help": "patch side in pixels"})
    channels: int = field(default=3, metadata={"help": "colour channels"})
    max_tiles: int = field(default=4, metadata={"help": "tiles per image, at most"})
    aspect_ratios: tuple[tuple[int, int], ...] = field(
        default=AR_LAYOUTS_4,
        metadata={"help": "tile layouts (rows, columns); aspect-ratio id i+1 is entry i"},
    )
    feature_layers: tuple[int, ...] = field(
        default=(3, 7, 15, 23, 30),
        metadata={"help": "encoder layers whose inputs join the final output as features"},
    )
    norm_eps: float = field(default=1e-5, metadata={"help": "LayerNorm epsilon"})
    cross_attention_layers: tuple[int, ...] = field(
        default=(3, 8, 13, 18, 23, 28, 33, 38),
        metadata={
            "help": "places of the cross-attention layers in the decoder's stack of n_layers + "
            "len(cross_attention_layers) layers (transformers' numbering)"
        },
    )
    extra_tokens: int = field(
        default=8,
        metadata={"help": "embedding rows after the vocabulary; the first is <|image|>"},
    )

    def __post_init__(self) -> None:
        # JSON gives lists; the config is frozen and hashable, so keep tuples.
        object.__setattr__(self, "aspect_ratios", tuple(tuple(a) for a in self.aspect_ratios))
        object.__setattr__(self, "feature_layers", tuple(self.feature_layers))
        object.__setattr__(self, "cross_attention_layers", tuple(self.cross_attention_layers))

    @property
    def patches(self) -> int:
        """Tokens per tile: the patches and a class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def feature_dim(self) -> int:
        """Width of the encoder's output per token: the final output and each feature layer's."""
        return self.dim * (len(self.feature_layers) + 1)

    def validate(self, source: str, text_layers: int) -> None:
        where = f"{source}: vision"
        for name in (
            "dim",
            "n_layers",
            "n_heads",
            "ffn_dim",
            "image_size",
            "patch_size",
            "channels",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise HerdError(f"{where} field '{name}' is {value!r}, expected a positive integer")
        for name in ("n_global_layers", "max_tiles", "extra_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise HerdError(f"{where} field '{name}' is {value!r}, expected an integer >= 0")
        if self.dim % self.n_heads:
            raise HerdError(f"{where} dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.image_size % self.patch_size:
            raise HerdError(
                f"{where} image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}"
            )
        if self.extra_tokens < 1:
            raise HerdError(f"{where} needs extra_tokens >= 1 (the <|image|> token's row)")
        if self.max_tiles < 1 or not self.aspect_ratios:
            raise HerdError(f"{where} needs max_tiles >= 1 and at least one aspect ratio")
        for rows, cols in self.aspect_ratios:
            if rows < 1 or cols < 1 or rows * cols > self.max_tiles:
                raise HerdError(
                    f"{where} aspect ratio {rows}x{cols} does not fit max_tiles {self.max_tiles}"
                )
        if any(not 0 <= i <= self.n_layers for i in self.feature_layers):
            raise HerdError(
                f"{where} feature_layers {list(self.feature_layers)} must lie in 0..{self.n_layers}"
            )
        places = self.cross_attention_layers
        total = text_layers + len(places)
        if list(places) != sorted(set(places)) or any(not 0 <= i < total for i in places):
            raise HerdError(
                f"{where} cross_attention_layers {list(places)} must be increasing places in "
                f"0..{total - 1} (n_layers {text_layers} + {len(places)} cross-attention layers)"
            )

    def encoder_params(self, text_dim: int) -> int:
        """The encoder and its projection to the text width `text_dim`."""
        d, tiles, layouts = self.dim, self.max_tiles, len(self.aspect_ratios) + 1
        patch = d * self.channels * self.patch_size**2
        # the position embedding: a gate, a table shared by every tile, one per tile of a layout
        position = 1 + self.patches * d + layouts * tiles * self.patches * d
        tile_embeddings = 2 * (1 + layouts * tiles * d)  # before and after the encoder
        norms = 2 * 2 * d  # LayerNorm weight and bias, before and after the encoder
        block = 4 * d * d + 2 * d * self.ffn_dim + self.ffn_dim + d + 2 * 2 * d
        layers = self.n_layers * block + self.n_global_layers * (block + 2)  # + two gates
        projector = self.feature_dim * text_dim + text_dim
        return patch + d + position + tile_embeddings + norms + layers + projector


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

    vision: VisionConfig | None = field(
        default=None,
        metadata={
            "help": "image encoder and cross-attention layers (Llama 3.2 Vision), or none for "
            "a text model"
        },
    )

    speech: SpeechConfig | None = field(
        default=None,
        metadata={
            "help": "speech encoder and adapter whose frames enter as tokens (Llama 3 section "
            "8), or none"
        },
    )

    video: VideoConfig | None = field(
        default=None,
        metadata={
            "help": "temporal aggregator and video cross-attention layers on the vision model "
            "(Llama 3 section 7.2), or none"
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
        if self.vision is not None:
            if self.head != "lm" or self.tie_embeddings:
                raise HerdError(f"{source}: a vision model has an untied language-model head")
            self.vision.validate(source, self.n_layers)
        if self.speech is not None:
            if self.head != "lm" or self.tie_embeddings:
                raise HerdError(f"{source}: a speech model has an untied language-model head")
            if self.vision is not None:
                raise HerdError(f"{source}: speech and vision in one model are not supported yet")
            self.speech.validate(source)
        if self.video is not None:
            if self.vision is None:
                raise HerdError(
                    f"{source}: a video model needs 'vision' too (each frame is read by the image "
                    "encoder)"
                )
            if (1, 1) not in self.vision.aspect_ratios:
                raise HerdError(
                    f"{source}: a video model reads frames as one tile: vision.aspect_ratios must "
                    "hold [1, 1]"
                )
            self.video.validate(source, self.dim)

    @property
    def image_token_id(self) -> int | None:
        """Id of <|image|>: the first embedding row after the vocabulary (Llama 3.2 Vision's
        128256), or None for a text model."""
        return None if self.vision is None else self.vocab_size

    @property
    def speech_token_ids(self) -> tuple[int, int, int] | None:
        """(<|speech_start|>, <|speech_end|>, <|speech|>): the rows after the vocabulary, or None
        for a model without speech."""
        if self.speech is None:
            return None
        v = self.vocab_size
        return v, v + 1, v + 2

    @property
    def video_token_id(self) -> int | None:
        """Id of <|video|>: the row after the image rows, or None for a model without video."""
        if self.video is None:
            return None
        return self.vocab_size + self.vision.extra_tokens

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
        total = self.vocab_size * d + self.n_layers * block + d + output
        if self.vision is not None:
            # Cross-attention layers: the block's shapes (no RoPE), RMSNorm gains on q and k per
            # head, and two tanh gates; the extra embedding rows; the encoder and projector.
            v = self.vision
            cross = block + 2 * h + 2
            total += len(v.cross_attention_layers) * cross + v.extra_tokens * d
            total += v.encoder_params(d)
        if self.speech is not None:
            total += self.speech.extra_tokens * d + self.speech.encoder_params(d)
        if self.video is not None:
            cross = block + 2 * h + 2
            layers = self.video.video_layers(len(self.vision.cross_attention_layers))
            total += self.video.extra_tokens * d + layers * cross
            total += self.video.aggregator_params(d)
        return total

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
        if self.vision is None:
            del out["vision"]  # likewise: written only for vision models
        if self.speech is None:
            del out["speech"]
        if self.video is None:
            del out["video"]
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
        vision = values.get("vision")
        if vision is not None:
            values["vision"] = _vision_from_dict(vision, source)
        if values.get("speech") is not None:
            values["speech"] = speech_from_dict(values["speech"], source)
        if values.get("video") is not None:
            values["video"] = video_from_dict(values["video"], source)
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


def _vision_from_dict(data: Any, source: str) -> VisionConfig:
    """A `VisionConfig` from config.json's "vision" object, rejecting unknown keys and values of
    the wrong kind (so a typo never silently becomes a default)."""
    if not isinstance(data, dict):
        raise HerdError(f"{source}: 'vision' must be an object or null")
    known = {f.name: f for f in dataclasses.fields(VisionConfig)}
    bad = sorted(set(data) - set(known))
    if bad:
        raise HerdError(
            f"{source}: unknown key 'vision.{bad[0]}' (expected one of: {', '.join(known)})"
        )
    values = dict(data)
    for name in ("feature_layers", "cross_attention_layers", "aspect_ratios"):
        if name in values and not isinstance(values[name], (list, tuple)):
            raise HerdError(f"{source}: 'vision.{name}' must be a list")
    if any(
        not isinstance(a, (list, tuple)) or len(a) != 2 for a in values.get("aspect_ratios", [])
    ):
        raise HerdError(f"{source}: 'vision.aspect_ratios' must be a list of [rows, columns]")
    return VisionConfig(**values)


def llama_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU width as Meta's reference code derives it: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)
