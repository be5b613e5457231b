"""Run configs: the TOML a training run reads, its sections, and dotted command-line overrides.

A run config has five sections: [model] (a preset name plus field overrides, see
`herd.model.config.ModelConfig`), [data] (`herd.data.config.DataConfig`), [optim], [train] and
[stability]. Every field's help string is what `herd train --help` prints. A value given on the
command line as `--SECTION.FIELD VALUE` (or `--SECTION.FIELD=VALUE`) overrides the file, and a
mistake is reported where the user wrote it: the override or the file, with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from herd.data.config import DataConfig
from herd.errors import HerdError
from herd.model.config import ModelConfig


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
    vision_train: str = field(
        default="adapter",
        metadata={
            "help": "with [model] vision: adapter (the text model frozen; the image encoder, "
            "projector, cross-attention layers and <|image|> row train, Llama 3 section 7) or "
            "full (everything trains)"
        },
    )


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
class LoraRunConfig:
    """LoRA adapters (Hu et al. 2021) on the projections; the base weights stay frozen."""

    r: int = field(default=0, metadata={"help": "adapter rank; 0: no LoRA (full fine-tuning)"})
    alpha: float = field(default=16.0, metadata={"help": "the update is scaled by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input"})
    target_modules: str = field(
        default="q_proj,v_proj",
        metadata={
            "help": "comma-separated projections: q_proj k_proj v_proj o_proj gate_proj up_proj "
            "down_proj, or all-linear"
        },
    )

    def lora_config(self):
        """herd.model.lora.LoraConfig of this section (None when r is 0)."""
        if self.r == 0:
            return None
        from herd.model.lora import LoraConfig

        targets = tuple(t.strip() for t in self.target_modules.split(",") if t.strip())
        return LoraConfig(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=targets)


@dataclass
class DPOConfig:
    """Direct preference optimisation (`herd dpo`; Llama 3 section 4.1.4)."""

    beta: float = field(
        default=0.1, metadata={"help": "scale of the policy/reference log-ratio (DPO's beta)"}
    )
    alpha: float = field(
        default=0.2,
        metadata={"help": "weight of the chosen responses' NLL term (Llama 3; 0: plain DPO)"},
    )


@dataclass
class RMConfig:
    """Reward-model training (`herd rm`; Llama 2 section 3.2.2)."""

    margin: str = field(
        default="none",
        metadata={
            "help": "margin table over the rows' rating: none (Llama 3), small (1, 2/3, 1/3, 0) "
            "or large (3, 2, 1, 0) for significantly better, better, slightly better, "
            "negligibly better / unsure; a row's own 'margin' number wins"
        },
    )
    epochs: float = field(
        default=1.0, metadata={"help": "passes over the pairs when train.steps is 0"}
    )
    warmup_fraction: float = field(
        default=0.03, metadata={"help": "warm-up share of the steps when optim.warmup_steps is -1"}
    )


@dataclass
class GuardConfig:
    """Guard training (`herd guard train`; Llama Guard 3, herd/guard/data.py)."""

    policy: str = field(
        default="",
        metadata={"help": "POLICY.toml of the categories to train on ('': Llama Guard 3's S1-S14)"},
    )
    drop_other: float = field(
        default=0.5,
        metadata={
            "help": "chance a row's prompt leaves out a random number of the categories "
            "it does not violate (category dropping)"
        },
    )
    drop_violated: float = field(
        default=0.1,
        metadata={
            "help": "chance an unsafe row's prompt leaves out all its violated categories, "
            "its label becoming safe"
        },
    )
    copies: int = field(
        default=1, metadata={"help": "training conversations per labelled row (own drops each)"}
    )


@dataclass
class PPOConfig:
    """PPO for RLHF (`herd ppo`; Llama 2 section 3.2.3, herd/posttrain/ppo.py)."""

    # The defaults are Llama 2-Chat's at scale where it states them and TRL's PPOConfig
    # otherwise (cliprange_value, vf_coef, gamma, lam); the optimizer's are PPO_OPTIM_DEFAULTS
    # (herd/posttrain/ppo.py), in [optim]. Defined here, not beside the losses, so that reading
    # a config (and `herd --help`) imports no torch.
    reward_model: str = field(
        default="", metadata={"help": "the (helpfulness) reward model: a `herd rm` checkpoint"}
    )
    safety_reward_model: str = field(
        default="",
        metadata={
            "help": "optional safety reward model: R_c = R_s on safety prompts or R_s < 0.15"
        },
    )
    batch_size: int = field(default=512, metadata={"help": "responses sampled per PPO iteration"})
    mini_batch_size: int = field(
        default=64, metadata={"help": "responses per gradient step (one step per mini-batch)"}
    )
    ppo_epochs: int = field(
        default=1, metadata={"help": "passes over each rollout batch (Llama 2: one)"}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "longest response sampled"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature (log-probs are of logits / it)"}
    )
    clip: float = field(
        default=0.2, metadata={"help": "PPO ratio clip: π/π_old held in [1 − clip, 1 + clip]"}
    )
    cliprange_value: float = field(
        default=0.2, metadata={"help": "new values stay within this of the rollout's values"}
    )
    vf_coef: float = field(
        default=0.1, metadata={"help": "weight of the value loss when one model has both heads"}
    )
    value_lr: float = field(
        default=0.0, metadata={"help": "the value model's learning rate; 0: optim.lr"}
    )
    kl_coef: float = field(
        default=0.01,
        metadata={"help": "β, the per-token KL penalty's weight (Llama 2: 0.01; 0.005 at 34B/70B)"},
    )
    kl_estimator: str = field(
        default="k1", metadata={"help": "per-token KL estimate: k1 (log π − log π_0) or k3"}
    )
    gamma: float = field(default=1.0, metadata={"help": "GAE discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ"})
    safety_threshold: float = field(
        default=0.15,
        metadata={"help": "R_s below this uses the safety reward on any prompt"},
    )

    def __post_init__(self) -> None:
        self.check(ValueError)

    def check(self, error: type[Exception] = HerdError) -> None:
        """`error` naming the first setting out of range (a run checks again after its file and
        overrides are applied, as those bypass __post_init__)."""
        if self.kl_estimator not in ("k1", "k3"):
            raise error(f"ppo.kl_estimator '{self.kl_estimator}': expected k1 or k3")
        for name in ("batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise error(f"ppo.{name} {getattr(self, name)}: expected a positive integer")
        if self.batch_size % self.mini_batch_size:
            raise error(
                f"ppo.batch_size {self.batch_size}: expected a multiple of ppo.mini_batch_size "
                f"{self.mini_batch_size}"
            )
        if self.temperature <= 0:
            raise error(f"ppo.temperature {self.temperature}: expected > 0")
        if self.clip <= 0 or self.cliprange_value <= 0:
            raise error("ppo.clip and ppo.cliprange_value: expected > 0")
        if self.kl_coef < 0 or self.value_lr < 0:
            raise error("ppo.kl_coef and ppo.value_lr: expected >= 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise error(f"ppo.gamma {self.gamma}, ppo.lam {self.lam}: expected values in [0, 1]")


@dataclass
class RunConfig:
    """A whole training run: model (a preset plus field overrides), data, optimizer, schedule."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "demo"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    lora: LoraRunConfig = field(default_factory=LoraRunConfig)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The architecture with [model]'s field overrides: a preset's, whose vocab_size follows
        the tokenizer unless set explicitly, or that of the checkpoint training starts from
        ([model] checkpoint: fine-tuning keeps the checkpoint's shapes and vocabulary)."""
        values = dict(self.model)
        start = values.pop("checkpoint", "")
        if start:
            from herd.checkpoint.convert import read_config

            base = read_config(start).to_dict()
        else:
            from herd.model.presets import preset

            base = preset(values.pop("preset", "demo")).to_dict()
            if vocab_size is not None and "vocab_size" not in values:
                values["vocab_size"] = vocab_size
        vision = values.get("vision")
        if isinstance(vision, dict) and "cross_attention_layers" not in vision:
            n_layers = values.get("n_layers", base.get("n_layers"))
            if isinstance(n_layers, int) and n_layers > 0:
                values["vision"] = {
                    **vision,
                    "cross_attention_layers": cross_attention_places(n_layers),
                }
        return ModelConfig.from_dict({**base, **values}, source="[model]")

    @property
    def init_checkpoint(self) -> str:
        """The checkpoint whose weights training starts from ("" for a random initialisation)."""
        return self.model.get("checkpoint", "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cross_attention_places(n_layers: int) -> list[int]:
    """Llama 3.2 Vision's placement for a text model of `n_layers` blocks: a cross-attention
    layer before text blocks 3, 7, 11, ... (11B: places 3, 8, ..., 38 of 40), or before the last
    block of a model with fewer than 4; as places in the combined stack."""
    before = list(range(3, n_layers, 4)) or [n_layers - 1]
    return [block + k for k, block in enumerate(before)]


SECTIONS = {
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "stability": StabilityConfig,
    "dpo": DPOConfig,
    "rm": RMConfig,
    "ppo": PPOConfig,
    "guard": GuardConfig,
    "lora": LoraRunConfig,
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


def load_run_config(
    path: str | None,
    overrides: dict[str, str] | None = None,
    defaults: dict[str, str] | None = None,
) -> RunConfig:
    """Read a TOML run config and apply dotted overrides ({"train.steps": "100"}). `defaults`
    (dotted, like overrides) replace the built-in defaults of a stage (`herd sft`'s learning
    rate, say): the file and the overrides still win over them."""
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
    valid = ["model", *SECTIONS]
    for section, values in data.items():
        if section not in valid:
            raise HerdError(f"{path}: unknown section '{section}'{_closest(section, valid)}")
        if not isinstance(values, dict):
            raise HerdError(f"{path}: '{section}' is a value, expected a [{section}] table")
    for key, value in (defaults or {}).items():
        section, _, name = key.partition(".")
        data.setdefault(section, {}).setdefault(name, value)
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
            samples = {"int": 0, "float": 0.0, "bool": False, "str": ""}
            defaults = {f.name: samples.get(str(f.type)) for f in dataclasses.fields(ModelConfig)}
            defaults["preset"] = "demo"
            defaults["checkpoint"] = ""
            if "checkpoint" in values and "preset" in values:
                raise HerdError(
                    f"{path}: [model] gives both preset and checkpoint; training starts from one"
                )
            if "checkpoint" in values:
                run.model.pop("preset")  # the checkpoint's architecture, not the default preset
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


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take the dotted overrides out of a command line before argparse sees the rest:
    ["c.toml", "--train.steps", "100", "--optim.lr=1e-3"] -> (["c.toml"],
    {"train.steps": "100", "optim.lr": "1e-3"}). A dotted option is an override; its value is
    after "=" or the next argument."""
    rest: list[str] = []
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        key, eq, value = token[2:].partition("=")
        if not (token.startswith("--") and "." in key):
            rest.append(token)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise HerdError(f"--{key} needs a value (overrides look like --train.steps 100)")
            value = argv[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return rest, overrides
