"""FLOP accounting, in one place: the trainer's MFU and every scaling fit use these numbers.

Training FLOPs per token (Kaplan et al. 2020, Chinchilla appendix F, as PaLM's MFU counts them):
    6 * N_dense          forward (2 per weight per token) + backward (4), over every matrix that
                         multiplies activations: the blocks and the output projection; the
                         embedding lookup is a gather, not a matmul, so untied embedding
                         weights are left out
    + 12 * L * d * T     attention scores and values: QK^T and AV, 2 * 2 * T * d per token and
                         layer forward, times 3 for forward + backward (causal masking is not
                         subtracted, as is customary)
Training compute of a run: C = flops_per_token * tokens. Scaling laws written in (N, D) use the
simpler C = 6 N D (Hoffmann et al. 2022), which `chinchilla_flops` gives.
"""

from __future__ import annotations

from herd.config import ModelConfig


def dense_params(config: ModelConfig) -> int:
    """Parameters that multiply activations: everything but an untied embedding table."""
    total = config.num_params()
    if config.tie_embeddings:
        return total
    return total - config.vocab_size * config.dim


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token at context `seq_len`: 6 N_dense + 12 L d T."""
    return 6.0 * dense_params(config) + 12.0 * config.n_layers * config.dim * seq_len


def chinchilla_flops(params: float, tokens: float) -> float:
    """C = 6 N D: the compute of N parameters trained on D tokens, in scaling-law fits and plots
    (numbers or numpy arrays)."""
    return 6.0 * params * tokens
