"""Optimiser and learning-rate schedule for MAE pretraining, as in He et al. 2021 (MAE), appendix A.1.

AdamW (0.9, 0.95) with decoupled weight decay on weight matrices only: biases, LayerNorm parameters, position
embeddings and the cls/mask tokens are not decayed. The peak rate follows the linear scaling rule
`base_lr x effective_batch / 256`; it warms up linearly, then follows a half cosine down to `min_lr`, evaluated per
optimiser step (not per epoch), so the schedule is a pure function of the step and resumes exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from encoder.train_config import OptimConfig

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices/kernels, and everything 1-D or named as an embedding/token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or any(n in name for n in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def peak_lr(cfg: OptimConfig, effective_batch: int) -> float:
    """The linear scaling rule: base_lr per 256 images."""
    return cfg.base_lr * effective_batch / 256


def lr_at(step: int, peak: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warmup to `peak`, then half cosine to `min_lr`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else round(cfg.warmup_epochs * steps_per_epoch)


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused CUDA kernel when the parameters live on a GPU."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=tuple(cfg.betas), fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
