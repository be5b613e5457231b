"""AdamW and the LLaMA learning-rate schedule (Touvron et al. 2023, section 2.3).

AdamW with beta1 0.9, beta2 0.95, weight decay 0.1 on matrices (not on RMSNorm gains, which decay
towards zero would fight), gradient clipping at 1.0 (in the trainer), linear warm-up, then cosine
decay to 10% of the peak rate. The fused CUDA kernel is used where available.
"""

from __future__ import annotations

import math

import torch

from herd.train.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True
    )


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak rate at `step` (0-based): warm-up, then cosine to min_lr_ratio."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: OptimConfig) -> float:
    lr = cfg.lr * lr_factor(step, total, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
