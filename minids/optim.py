"""The optimizer and the schedules a run follows: AdamW (weight decay on matrices only), linear
warmup + cosine decay of the learning rate, V3's MTP weight lambda (0.3, then 0.1; arXiv
2412.19437 sec. 4.2) and gradient clipping. Pure functions of the step and the TrainConfig, kept
apart from minids.train so each can be read, plotted and tested on its own.
"""

from __future__ import annotations

import math

import torch

from .compiling import use_fused_adamw
from .config import TrainConfig


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases or embeddings' 1-D params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=use_fused_adamw(tc))


def apply_settings(optimizer: torch.optim.AdamW, tc: TrainConfig) -> None:
    """A resumed run follows its TrainConfig, not the checkpoint's: loading an optimizer's state also
    loads its groups' weight decay and betas, which would silently override --weight-decay/--beta1/
    --beta2 given with --resume (the learning rate is set every step anyway)."""
    decay, no_decay = optimizer.param_groups          # as make_optimizer builds them
    decay["weight_decay"], no_decay["weight_decay"] = tc.weight_decay, 0.0
    for group in optimizer.param_groups:
        group["betas"] = (tc.beta1, tc.beta2)


def lr_at(it: int, tc: TrainConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then flat."""
    decay_iters = tc.lr_decay_iters or tc.max_iters
    if it < tc.warmup_iters:
        return tc.learning_rate * (it + 1) / (tc.warmup_iters + 1)
    if it >= decay_iters:
        return tc.min_lr
    ratio = (it - tc.warmup_iters) / max(decay_iters - tc.warmup_iters, 1)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.learning_rate - tc.min_lr)


def mtp_weight_at(it: int, tc: TrainConfig, base: float) -> float:
    """V3's lambda schedule: `base` (0.3) first, `mtp_loss_weight_final` (0.1) after the switch."""
    if tc.mtp_loss_weight_final is not None and it >= tc.mtp_loss_switch * tc.max_iters:
        return tc.mtp_loss_weight_final
    return base


def total_grad_norm(model: torch.nn.Module, tc: TrainConfig) -> torch.Tensor:
    """Clip to tc.grad_clip and return the norm before clipping; without clipping, the norm alone."""
    if tc.grad_clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
