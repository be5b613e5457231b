"""herd: build Llama-family foundation models end to end, PyTorch-native.

Public API (see DESIGN.md):
    model = herd.load(path, device="cpu", dtype=None)
    tok = herd.load_tokenizer(path)              # checkpoint folder or tokenizer file
    logits = model(tokens)                       # LongTensor [B, T] -> FloatTensor [B, T, vocab]
    new_ids = herd.generate(model, prompt_ids, max_new_tokens=64, temperature=0.0, top_p=1.0)
    cfg = herd.preset("llama3-8b"); cfg.num_params()
"""

from herd.checkpoint.convert import load
from herd.config import ModelConfig, RopeScaling
from herd.errors import HerdError
from herd.generate import generate, stream_generate
from herd.model.transformer import Transformer, build_model
from herd.presets import preset
from herd.tokenizer import load_tokenizer

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
