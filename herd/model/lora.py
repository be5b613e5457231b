"""Low-rank adapters (LoRA, Hu et al. 2021) on herd's linear layers, in PEFT's file layout.

A targeted projection y = W x becomes

    y = W x + (alpha / r) * B A dropout(x),     A [r, in], B [out, r]

with W frozen and only A and B trained (section 4.1). A starts Kaiming-uniform and B at zero, as
in PEFT, so an adapted model starts out computing exactly its base model (section 4.1: "B = 0, so
delta W = BA is zero at the beginning of training") while A's gradients are already non-zero.

The wrapped layer keeps the base `weight` Parameter itself (the same object, not a copy) and adds
`lora_A` / `lora_B` beside it, so the base's state-dict names are unchanged and a checkpoint's
weights still load into an adapted model. `adapters_disabled` switches every adapter off for a
block of code: DPO's reference model is the same weights with the adapters off, so no second copy
of the base is held.

Target modules are named as PEFT and transformers name them (q_proj, k_proj, v_proj, o_proj,
gate_proj, up_proj, down_proj, or "all-linear" for all seven): those are the names that go into
adapter_config.json and that users know from PEFT. herd's own names (wq, wk, wv, wo, w1, w3, w2)
are accepted as aliases. The output projection (lm_head) is not a target: the fused training loss
(herd/model/transformer.py) reads `output.weight` directly, which would skip its adapter.

`save_adapter` writes adapter_model.safetensors + adapter_config.json exactly as PEFT saves a LoRA
for transformers' LlamaForCausalLM, so `PeftModel.from_pretrained(hf_model, folder)` on the HF
export of the base gives herd's logits. herd stores q/k rows in the HF (half-split) RoPE layout
(herd/model/rope.py), and the HF export is a pure rename (herd/checkpoint/hf.py), so B's rows need
no permutation: PEFT adds B A to the same rows herd does.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from herd.atomic_files import write_folder_atomically
from herd.errors import HerdError
from herd.model.linear import Linear

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# PEFT/HF target name -> herd attribute name inside a Block's attn or ffn.
HF_TO_HERD_TARGET = {
    "q_proj": "wq",
    "k_proj": "wk",
    "v_proj": "wv",
    "o_proj": "wo",
    "gate_proj": "w1",
    "up_proj": "w3",
    "down_proj": "w2",
}
_HERD_TO_HF_TARGET = {v: k for k, v in HF_TO_HERD_TARGET.items()}
# herd's sub-block name -> transformers' (the rest of the mapping is herd/checkpoint/hf.py's; model/
# may not import checkpoint/, and a parity test checks that the two agree).
_HF_SUBBLOCK = {"attn": "self_attn", "ffn": "mlp"}
# The prefix PEFT's PeftModelForCausalLM puts before transformers' own parameter names.
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraConfig:
    """What to adapt and how; the fields mirror PEFT's LoraConfig of the same names."""

    r: int = 8
    """rank of the update B A"""
    alpha: float = 16.0
    """the update is scaled by alpha / r (PEFT's lora_alpha)"""
    dropout: float = 0.0
    """dropout on the adapter's input while training (PEFT's lora_dropout)"""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """projections to adapt: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, herd's
    wq wk wv wo w1 w3 w2, or "all-linear"; the default is the paper's W_q and W_v (section 7.1)"""
    modules_to_save: tuple[str, ...] = ()
    """top-level modules trained whole beside the adapters and saved with them (PEFT's
    modules_to_save): a vision model's added parts (herd.model.multimodal.ADDED_PARTS) when its
    text model gets LoRA"""
    targets: tuple[str, ...] = field(init=False, repr=False)
    """the targets as PEFT names, sorted (derived)"""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.modules_to_save = tuple(self.modules_to_save or ())
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise HerdError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise HerdError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        names = set()
        for t in self.target_modules:
            if t == "all-linear":
                names.update(HF_TO_HERD_TARGET)
            elif t in HF_TO_HERD_TARGET:
                names.add(t)
            elif t in _HERD_TO_HF_TARGET:
                names.add(_HERD_TO_HF_TARGET[t])
            else:
                known = ", ".join([*HF_TO_HERD_TARGET, *_HERD_TO_HF_TARGET, "all-linear"])
                raise HerdError(f"unknown LoRA target module '{t}' (expected one of {known})")
        if not names:
            raise HerdError("LoRA target_modules is empty")
        self.targets = tuple(sorted(names))

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoraLinear(Linear):
    """herd's `Linear` holding its base weight (frozen) plus a rank-r update (module docstring)."""

    def __init__(self, base: Linear, config: LoraConfig) -> None:
        nn.Module.__init__(self)  # no weight of its own: it takes the base's Parameter
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.r, self.scale = config.r, config.scale
        w = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(config.r, self.in_features, device=w.device, dtype=w.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, config.r, device=w.device, dtype=w.dtype)
        )
        # PEFT's initialisation (that of nn.Linear's weight): U(-1/sqrt(in), 1/sqrt(in)).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.adapter_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.adapter_enabled:
            return y
        # Two thin products (x A^T, then B) rather than forming B A: r is far below in and out.
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return y + update * self.scale

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A, computed in at least float32, in W's dtype."""
        wide = torch.promote_types(self.weight.dtype, torch.float32)
        delta = self.lora_B.detach().to(wide) @ self.lora_A.detach().to(wide)
        return (self.weight.detach().to(wide) + self.scale * delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, r={self.r}, scale={self.scale:g}"


def _target_paths(model: nn.Module, config: LoraConfig) -> list[str]:
    """herd module paths (layers.{i}.attn.wq, ...) of every targeted projection: the text
    blocks' (a vision model's encoder and cross-attention layers have projections of the same
    names; they are trained whole, as modules_to_save, or frozen)."""
    wanted = {HF_TO_HERD_TARGET[t] for t in config.targets}
    paths = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if (
            len(parts) == 4
            and parts[0] == "layers"
            and parts[2] in _HF_SUBBLOCK
            and parts[3] in wanted
            and isinstance(module, Linear)
        ):
            paths.append(name)
    return paths


def _saved_whole(name: str, config: LoraConfig) -> bool:
    """Whether parameter `name` belongs to one of the config's modules_to_save."""
    return name.split(".", 1)[0] in config.modules_to_save


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """The adapted projections by herd module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap the targeted projections in place and freeze everything but the adapters (and the
    config's modules_to_save)."""
    if lora_layers(model):
        raise HerdError("the model already has LoRA adapters")
    paths = _target_paths(model, config)
    if not paths:
        raise HerdError(f"no projections named {', '.join(config.targets)} in the model")
    missing = sorted(set(config.modules_to_save) - {n for n, _ in model.named_children()})
    if missing:
        raise HerdError(f"modules_to_save '{missing[0]}' is not a part of the model")
    for name, p in model.named_parameters():
        p.requires_grad_(_saved_whole(name, config))
    for path in paths:
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, leaf, LoraLinear(getattr(parent, leaf), config))
    model.lora_config = config  # read by save_adapter
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes its base (DPO's reference) from the same weights."""
    layers = list(lora_layers(model).values())
    before = [m.adapter_enabled for m in layers]
    for m in layers:
        m.adapter_enabled = False
    try:
        yield model
    finally:
        for m, state in zip(layers, before, strict=True):
            m.adapter_enabled = state


def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each adapted weight replaced by W + (alpha / r) B A and no
    adapter tensors: plain weights that load into an unadapted `Transformer`. The model is left
    as it is."""
    layers = lora_layers(model)
    merged = {f"{path}.weight": m.merged_weight() for path, m in layers.items()}
    out = {}
    for name, t in model.state_dict().items():
        if name.rpartition(".")[2] in ("lora_A", "lora_B"):
            continue
        out[name] = merged.get(name, t)
    return out


# --- PEFT's files ------------------------------------------------------------------------------


def _peft_key(path: str, which: str) -> str:
    """PEFT's key of a herd module path's lora_A/lora_B: base_model.model.model.layers.0...."""
    layers, i, block, leaf = path.split(".")
    hf = f"model.{layers}.{i}.{_HF_SUBBLOCK[block]}.{_HERD_TO_HF_TARGET[leaf]}"
    return f"{_PEFT_PREFIX}{hf}.{which}.weight"


def peft_names(herd_names, modules_to_save: tuple[str, ...] = ()) -> dict[str, str]:
    """herd parameter name (layers.0.attn.wq.lora_A) -> PEFT key, for every adapter tensor
    among `herd_names` (the keys of a full state dict, e.g. gathered under FSDP2), and for the
    parameters of `modules_to_save`, which PEFT saves whole under base_model.model.<name> (herd's
    name here: the base of a vision LoRA is a herd text model, with no transformers twin)."""
    out = {}
    for name in herd_names:
        path, _, which = name.rpartition(".")
        if which in ("lora_A", "lora_B"):
            out[name] = _peft_key(path, which)
        elif name.split(".", 1)[0] in modules_to_save:
            out[name] = f"{_PEFT_PREFIX}{name}"
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters (and modules_to_save) under PEFT's key names (without the adapter name, as
    PEFT saves them)."""
    params = dict(model.named_parameters())
    names = peft_names(params, model.lora_config.modules_to_save)
    return {peft: params[n].detach() for n, peft in names.items()}


def peft_config_dict(config: LoraConfig, base_path: str | Path | None) -> dict:
    """adapter_config.json as PEFT writes it for a causal LM (the fields herd's adapters use)."""
    base = None if base_path is None else str(base_path)
    if base_path is not None and Path(base_path).exists():
        base = str(Path(base_path).resolve())  # readable from any working directory
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(config.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": list(config.modules_to_save) or None,
        "inference_mode": True,
    }


def save_adapter(
    model: nn.Module, folder: str | Path, base_path: str | Path | None, overwrite: bool = False
) -> Path:
    """Write adapter_model.safetensors + adapter_config.json (PEFT's layout) atomically."""
    from safetensors.torch import save_file

    config = getattr(model, "lora_config", None)
    if config is None or not lora_layers(model):
        raise HerdError("the model has no LoRA adapters to save")
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    cfg = peft_config_dict(config, base_path)

    def fill(tmp: Path) -> None:
        save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")

    return write_folder_atomically(Path(folder), fill, overwrite)


def _expect(ok: bool, path: Path, message: str) -> None:
    if not ok:
        raise HerdError(f"{path}: {message}")


def read_adapter_config(folder: str | Path) -> tuple[LoraConfig, str | None]:
    """The LoRA settings and base_model_name_or_path of a PEFT adapter folder; anything PEFT can
    express that herd's adapters do not compute (DoRA, rsLoRA, per-layer ranks, ...) is refused
    rather than silently computed differently."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    _expect(folder.is_dir(), folder, "no such adapter folder")
    _expect(path.is_file(), folder, f"no {ADAPTER_CONFIG} (not a LoRA adapter folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: not valid JSON ({e})") from None
    _expect(isinstance(data, dict), path, "expected a JSON object")
    _expect(
        data.get("peft_type") == "LORA",
        path,
        f"peft_type {data.get('peft_type')!r}, expected 'LORA'",
    )
    for flag in ("use_dora", "use_rslora", "fan_in_fan_out"):
        _expect(not data.get(flag), path, f"'{flag}: true' is not supported")
    for key in ("rank_pattern", "alpha_pattern", "layers_to_transform"):
        _expect(not data.get(key), path, f"'{key}' is not supported")
    saved = data.get("modules_to_save") or []
    _expect(
        isinstance(saved, list) and all(isinstance(m, str) for m in saved),
        path,
        f"modules_to_save {saved!r}: expected a list of module names",
    )
    _expect(data.get("bias", "none") == "none", path, f"bias {data.get('bias')!r} is not supported")
    targets = data.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        raise HerdError(f"{path}: target_modules as a pattern ({targets!r}) is not supported")
    _expect(bool(targets), path, "missing 'target_modules'")
    try:
        config = LoraConfig(
            r=data["r"],
            alpha=float(data.get("lora_alpha", 8)),
            dropout=float(data.get("lora_dropout", 0.0)),
            target_modules=tuple([targets] if isinstance(targets, str) else targets),
            modules_to_save=tuple(saved),
        )
    except KeyError as e:
        raise HerdError(f"{path}: missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise HerdError(f"{path}: invalid value ({e})") from None
    except HerdError as e:
        raise HerdError(f"{path}: {e}") from None
    return config, data.get("base_model_name_or_path")


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Read a PEFT LoRA folder into `model`: adapters are added (as `apply_lora`) if the model
    has none, and every tensor's name and shape is checked before any is copied."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config, _ = read_adapter_config(folder)
    weights = folder / ADAPTER_WEIGHTS
    _expect(weights.is_file(), folder, f"no {ADAPTER_WEIGHTS}")
    try:  # safetensors only: an adapter downloaded from anywhere is never unpickled
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise HerdError(f"{weights}: unreadable safetensors file ({e})") from None
    parts = {n for n, _ in model.named_children()}
    absent = [m for m in config.modules_to_save if m not in parts]
    _expect(not absent, folder, f"modules_to_save {', '.join(absent)}: not parts of the model")
    if not lora_layers(model):
        apply_lora(model, config)
    elif (model.lora_config.targets, model.lora_config.r, model.lora_config.modules_to_save) != (
        config.targets,
        config.r,
        config.modules_to_save,
    ):
        raise HerdError(f"{folder}: its targets, rank or modules differ from the model's adapters")
    state = dict(model.named_parameters())
    params = {peft: state[n] for n, peft in peft_names(state, config.modules_to_save).items()}
    missing = sorted(set(params) - set(tensors))
    _expect(not missing, weights, f"missing tensor '{missing[0]}'" if missing else "")
    extra = sorted(set(tensors) - set(params))
    _expect(not extra, weights, f"unexpected tensor '{extra[0]}'" if extra else "")
    for name, p in params.items():
        got, want = tuple(tensors[name].shape), tuple(p.shape)
        _expect(
            got == want, weights, f"tensor '{name}' has shape {list(got)}, expected {list(want)}"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    return model


def trainable_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """The parameters an optimizer should see (the adapters, after `apply_lora`)."""
    return (p for p in model.parameters() if p.requires_grad)
