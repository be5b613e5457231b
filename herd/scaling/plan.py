"""Compute-optimal planning: N_opt and D_opt for a budget, and the nearest herd architecture.

The architecture search walks Llama-shaped decoders (head_dim 64 below dim 1024, else 128 with
8 key/value heads; SwiGLU width 8/3 d rounded up to a multiple of 64 as Meta's `multiple_of`
does; dim / n_layers between 64 and 136 above dim 1024, as in the published Llama models, and
between 32 and 128 below) and picks the one whose parameter count,
as `herd info` counts it (embeddings included, as Chinchilla counts N), is closest to N_opt in log
space. The result is a ready run config: model shape, data batch, step count for D_opt tokens,
and the LLaMA optimiser defaults.
"""

from __future__ import annotations

import math

from herd.data.config import DataConfig
from herd.errors import HerdError
from herd.model.config import ModelConfig
from herd.scaling.chinchilla import ChinchillaLaw
from herd.train.config import OptimConfig, RunConfig, TrainConfig, dump_toml


def llama_shape(dim: int, n_layers: int, vocab_size: int, max_seq_len: int) -> ModelConfig:
    head_dim = 64 if dim < 1024 else 128
    n_heads = max(1, dim // head_dim)
    n_kv_heads = n_heads if n_heads < 8 else 8 if n_heads % 8 == 0 else n_heads
    ffn = int(math.ceil(8 * dim / 3 / 64) * 64)
    return ModelConfig(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=vocab_size,
        ffn_dim=ffn,
        max_seq_len=max_seq_len,
        rope_theta=500000.0,
    )


def nearest_architecture(params: float, vocab_size: int = 32000, max_seq_len: int = 2048):
    """(ModelConfig, its parameter count) closest to `params` in log space."""
    if not params > 0:
        raise HerdError(f"params {params}: expected a positive number")
    best = None
    # whole heads of 64 (below 1024) or 128 above
    dims = [*range(64, 1024, 64), *range(1024, 32768 + 1, 256)]
    for dim in dims:
        widest, narrowest = (32, 128) if dim < 1024 else (64, 136)  # dim / n_layers
        for n_layers in range(max(1, dim // narrowest), max(2, dim // widest) + 1):
            config = llama_shape(dim, n_layers, vocab_size, max_seq_len)
            count = config.num_params()  # counted from the shapes: cheap
            gap = abs(math.log(count / params))
            if best is None or gap < best[0]:
                best = (gap, config, count)
        if llama_shape(dim, max(1, dim // 136), vocab_size, max_seq_len).num_params() > 4 * params:
            break
    return best[1], best[2]


def plan(
    law: ChinchillaLaw,
    flops: float,
    vocab_size: int = 32000,
    seq_len: int = 2048,
    batch_tokens: int = 1 << 20,
) -> dict:
    """N_opt, D_opt, tokens per parameter, and a run config for the nearest architecture."""
    if not flops > 0 or not math.isfinite(flops):
        raise HerdError(f"--flops {flops}: expected a positive number")
    n_opt, d_opt = (float(x) for x in law.optimal(flops))
    config, count = nearest_architecture(n_opt, vocab_size, seq_len)
    tokens = flops / (6 * count)  # the budget spent on the architecture actually chosen
    batch = max(1, batch_tokens // seq_len)
    steps = max(1, round(tokens / (batch * seq_len)))
    run = RunConfig(
        model={k: v for k, v in config.to_dict().items() if k != "rope_scaling"}
        | {"preset": "demo"},
        data=DataConfig(seq_len=seq_len, batch_size=batch),
        optim=OptimConfig(warmup_steps=min(2000, max(1, steps // 100))),
        train=TrainConfig(steps=steps),
    )
    return {
        "flops": flops,
        "params_opt": n_opt,
        "tokens_opt": d_opt,
        "tokens_per_param": d_opt / n_opt,
        "architecture": {
            "dim": config.dim,
            "n_layers": config.n_layers,
            "n_heads": config.n_heads,
            "n_kv_heads": config.n_kv_heads,
            "ffn_dim": config.ffn_dim,
            "params": count,
        },
        "tokens_for_architecture": tokens,
        "toml": dump_toml(run),
    }
