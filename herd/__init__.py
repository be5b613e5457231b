"""herd: build Llama-family foundation models end to end, PyTorch-native.

Public API (see DESIGN.md):
    model = herd.load(path, device="cpu", dtype=None)
    tok = herd.load_tokenizer(path)              # checkpoint folder or tokenizer file
    logits = model(tokens)                       # LongTensor [B, T] -> FloatTensor [B, T, vocab]
    new_ids = herd.generate(model, prompt_ids, max_new_tokens=64, temperature=0.0, top_p=1.0)
    cfg = herd.preset("llama3-8b"); cfg.num_params()

The names are imported on first use (module `__getattr__`, PEP 562): `import herd`, and so every
`herd` command's `--help`, loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from herd.errors import HerdError

# public name -> the module that defines it
_PUBLIC = {
    "ModelConfig": "herd.model.config",
    "RopeScaling": "herd.model.config",
    "Transformer": "herd.model.transformer",
    "build_model": "herd.model.families",
    "generate": "herd.generation",
    "stream_generate": "herd.generation",
    "load": "herd.checkpoint.convert",
    "load_tokenizer": "herd.tokenizer",
    "preset": "herd.model.presets",
}

__all__ = [
    "HerdError",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "build_model",
    "generate",
    "load",
    "load_tokenizer",
    "preset",
    "stream_generate",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on demand
    from herd.checkpoint.convert import load
    from herd.generation import generate, stream_generate
    from herd.model.config import ModelConfig, RopeScaling
    from herd.model.families import build_model
    from herd.model.presets import preset
    from herd.model.transformer import Transformer
    from herd.tokenizer import load_tokenizer


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'herd' has no attribute '{name}'")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
