"""Dataclass configs: the model architecture, with validation and exact parameter counting.

A `ModelConfig` fully describes a Llama-family decoder (LLaMA, Llama 2, Llama 3.x): every preset,
checkpoint folder and converter goes through it. Field help strings double as documentation for the
CLI. Unknown keys and impossible shapes are rejected with a `HerdError` naming the source and field,
so a typo in a config never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError


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

    def num_params(self) -> int:
        """Exact parameter count, computed by building the model on the meta device (no memory)."""
        import torch

        from herd.model.transformer import Transformer  # local: config must not import torch code

        with torch.device("meta"):
            model = Transformer(self)
        return sum(p.numel() for p in model.parameters())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


# --- run configs: TOML files with dotted command-line overrides ----------------------------------


@dataclass
class DataConfig:
    """What to train on."""

    path: str = field(default="", metadata={"help": "folder written by `herd data prepare`"})
    seq_len: int = field(default=256, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(
        default=8, metadata={"help": "sequences per micro-batch, summed over all processes"}
    )
    objective: str = field(
        default="nxtuni", metadata={"help": "nxtuni, nxtpre, mskuni or mskbi (Artetxe et al.)"}
    )
    document_mask: bool = field(
        default=True, metadata={"help": "attend within documents only (Llama 3); else causal"}
    )
    n_spans: int = field(default=1, metadata={"help": "masked spans per document (mskuni, mskbi)"})
    mask_fraction: float = field(
        default=0.15,
        metadata={"help": "share of each document's tokens masked, over all its spans (msk*)"},
    )
    end_marker: bool = field(
        default=True,
        metadata={
            "help": "close the last span with a sentinel so an infilling model learns to stop "
            "(msk*)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the window order and objectives"})


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay, as in LLaMA (section 2.3)."""

    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a share of peak"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "decoupled weight decay"})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.95, metadata={"help": "Adam beta2"})
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    grad_clip: float = field(default=1.0, metadata={"help": "global gradient-norm clip"})


@dataclass
class TrainConfig:
    """How long, how often, where."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per step"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    dtype: str = field(default="auto", metadata={"help": "autocast dtype: auto (bf16 on GPU)"})
    param_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the weights, gradients and AdamW moments: float32, or float64 "
            "for numerical checks on CPU"
        },
    )
    compile: bool = field(
        default=False, metadata={"help": "torch.compile every Transformer block (before FSDP2)"}
    )
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute blocks"})
    log_every: int = field(default=10, metadata={"help": "steps between metrics lines"})
    eval_every: int = field(default=100, metadata={"help": "steps between validations"})
    eval_batches: int = field(default=20, metadata={"help": "validation batches"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=3, metadata={"help": "checkpoints to keep"})
    peak_flops: float = field(
        default=0.0,
        metadata={
            "help": "peak FLOP/s of one device for MFU; 0: from herd's table of bf16 dense peaks "
            "by device name (MFU is left empty for devices not in it)"
        },
    )
    checkpoint_format: str = field(
        default="auto",
        metadata={"help": "full (gathered), sharded (DCP per process) or auto (sharded if >1)"},
    )
    out: str = field(default="runs/run", metadata={"help": "run folder"})


@dataclass
class StabilityConfig:
    """Adam-instability monitor and loss-spike handling (herd/train/stability.py)."""

    enabled: bool = field(default=True, metadata={"help": "monitor and detect spikes"})
    every: int = field(
        default=100, metadata={"help": "steps between per-layer statistics (no host sync between)"}
    )
    eps_scale: float = field(
        default=10.0, metadata={"help": "a gradient component is 'at eps scale' below this x eps"}
    )
    window: int = field(default=50, metadata={"help": "trailing losses the spike detector sees"})
    threshold: float = field(
        default=6.0, metadata={"help": "robust z-score (median / MAD of the window) of a spike"}
    )
    min_rise: float = field(
        default=0.05, metadata={"help": "a spike also exceeds the window median by this share"}
    )
    response: str = field(
        default="log", metadata={"help": "on a spike: log, skip, rewind, lower_lr or eps"}
    )
    skip_batches: int = field(
        default=200, metadata={"help": "rewind: batches skipped after restoring the checkpoint"}
    )
    lr_factor: float = field(default=0.5, metadata={"help": "lower_lr: learning-rate multiplier"})
    lr_steps: int = field(default=100, metadata={"help": "lower_lr: steps it lasts"})
    eps_factor: float = field(default=10.0, metadata={"help": "eps: multiplier of Adam's eps"})
    max_rewinds: int = field(
        default=5, metadata={"help": "rewind: at most this many, then spikes are skipped"}
    )
    max_skips: int = field(
        default=10,
        metadata={
            "help": "skip, rewind: after this many consecutive spiking steps, updates apply again "
            "and the detector's window takes in the new loss level"
        },
    )


@dataclass
class RunConfig:
    """A whole training run: model (a preset plus field overrides), data, optimizer, schedule."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "demo"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The preset with overrides; vocab_size follows the tokenizer unless set explicitly."""
        from herd.presets import preset

        values = dict(self.model)
        base = preset(values.pop("preset", "demo")).to_dict()
        if vocab_size is not None and "vocab_size" not in values:
            values["vocab_size"] = vocab_size
        return ModelConfig.from_dict({**base, **values}, source="[model]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "stability": StabilityConfig,
}


def _closest(key: str, valid: list[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{match[0]}'?)" if match else f" (expected one of: {', '.join(valid)})"


def _coerce(value: Any, current: Any, key: str, where: str) -> Any:
    """A config value in the type of the field it sets: an override's string is parsed, a TOML
    value is checked (an integer-valued float such as 1e3 counts as an integer)."""
    kind = type(current)
    wanted = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if kind not in wanted:  # a field without a typed default: taken as written
        return value
    raw = value
    try:
        if isinstance(value, str) and kind is not str:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            value = (
                float(value) if kind is float or not value.lstrip("+-").isdigit() else int(value)
            )
        if isinstance(value, bool) != (kind is bool):
            raise ValueError
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise ValueError
    except ValueError:
        if where.startswith("--"):
            raise HerdError(f"{where} {raw}: expected {wanted[kind]}") from None
        shown = json.dumps(raw)  # as TOML writes it: true, 2.5, "abc"
        raise HerdError(f"{where}: {key} = {shown}, expected {wanted[kind]}") from None
    return value


def load_run_config(path: str | None, overrides: dict[str, str] | None = None) -> RunConfig:
    """Read a TOML run config and apply dotted overrides ({"train.steps": "100"})."""
    import tomllib

    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise HerdError(f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise HerdError(f"{path}: not valid TOML ({e})") from None
    valid = ["model", *_SECTIONS]
    for section, values in data.items():
        if section not in valid:
            raise HerdError(f"{path}: unknown section '{section}'{_closest(section, valid)}")
        if not isinstance(values, dict):
            raise HerdError(f"{path}: '{section}' is a value, expected a [{section}] table")
    overridden = set()
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if not name:
            raise HerdError(f"--{key}: overrides are SECTION.FIELD, e.g. --train.steps 100")
        if section not in valid:
            raise HerdError(f"--{key}: unknown section '{section}'{_closest(section, valid)}")
        data.setdefault(section, {})[name] = value
        overridden.add(key)

    run = RunConfig()
    for section, values in data.items():
        if section == "model":
            # A value of each field's type stands in for the default _coerce reads the type from
            # (the shape fields have none); rope_scaling, a table, is checked by ModelConfig.
            samples = {"int": 0, "float": 0.0, "bool": False}
            defaults = {f.name: samples.get(str(f.type)) for f in dataclasses.fields(ModelConfig)}
            defaults["preset"] = "demo"
        else:
            target = getattr(run, section)
            defaults = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
        for k, v in values.items():
            key = f"{section}.{k}"
            # A mistake is reported where the user wrote it: the override or the file.
            where = f"--{key}" if key in overridden else str(path)
            if k not in defaults:
                raise HerdError(f"{where}: unknown key '{key}'{_closest(k, [*defaults])}")
            value = _coerce(v, defaults[k], key, where)
            if section == "model":
                run.model[k] = value
            else:
                setattr(target, k, value)
    return run


def dump_toml(run: RunConfig) -> str:
    """The resolved config as TOML (what a run folder's config.toml holds)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for section, values in run.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
