"""Optimiser and learning-rate schedule.

    lr(s) = lr_max · s / S_warm                               s < S_warm  (linear warm-up)
    lr(s) = lr_max · f((s − S_warm) / (S − S_warm))           otherwise, with
            f(x) = 1 (constant), 1 − x (linear), ½(1 + cos πx) (cosine)

s counts optimiser steps (μ per generation batch), S = total optimiser steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from grpo.config import UserError


@dataclass
class OptimSettings:
    """Optimiser and learning-rate schedule of a training script (GRPO, SEGA and SFT settings inherit it)."""

    learning_rate: float = 2e-4
    """peak learning rate"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    """AdamW (torch), or bitsandbytes' 8-bit AdamW"""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """learning-rate schedule after warm-up"""
    warmup_ratio: float = 0.0
    """fraction of the optimiser steps spent warming the learning rate up linearly"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this; 0 = no clipping (the norm is still logged)"""

    def make_optimizer(self, params: list[torch.Tensor], *, total_steps: int, warmup_steps: Optional[int] = None):
        """(optimizer, scheduler) over `params` for `total_steps` optimiser steps; the warm-up lasts
        ceil(warmup_ratio · total_steps) steps unless `warmup_steps` is given."""
        if warmup_steps is None:
            warmup_steps = math.ceil(self.warmup_ratio * total_steps)
        optimizer = make_optimizer(params, name=self.optimizer, lr=self.learning_rate, weight_decay=self.weight_decay)
        return optimizer, make_scheduler(optimizer, kind=self.lr_scheduler, warmup_steps=warmup_steps,
                                         total_steps=total_steps)


def make_optimizer(params: list[torch.Tensor], *, name: str, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (`adamw_8bit`, state in 8 bits: ~4× less optimiser memory)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    if name == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    raise UserError(f"unknown optimizer {name!r}; valid: adamw, adamw_8bit")


def lr_factor(step: int, *, kind: str, warmup_steps: int, total_steps: int) -> float:
    """The multiplier of lr_max at optimiser step `step` (formula in the module docstring)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    x = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 - x
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    raise UserError(f"unknown lr_scheduler {kind!r}; valid: constant, linear, cosine")


def make_scheduler(optimizer: torch.optim.Optimizer, *, kind: str, warmup_steps: int, total_steps: int):
    lr_factor(0, kind=kind, warmup_steps=warmup_steps, total_steps=total_steps)  # validate `kind` now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, kind=kind, warmup_steps=warmup_steps, total_steps=total_steps))
