"""Optimiser and learning-rate schedule.

    lr(s) = lr_max · s / S_warm                               s < S_warm  (linear warm-up)
    lr(s) = lr_max · f((s − S_warm) / (S − S_warm))           otherwise, with
            f(x) = 1 (constant), 1 − x (linear), ½(1 + cos πx) (cosine)

s counts optimiser steps (μ per generation batch), S = total optimiser steps.

[D1] `GuardedStep` applies a step only when the loss and the gradient norm are finite (issue #13): one
     `inf` reward or a NaN in the forward otherwise turns every trained weight into NaN, and the run
     goes on to save them. A skipped step drops the gradients and leaves the optimiser state and the
     schedule as they were; `max_skipped_steps` skips in a row stop the run (the last checkpoint is
     intact). Under torchrun the gradient norm is that of the summed gradients, the same on every rank,
     and the caller agrees on the loss across ranks, so all ranks skip or step together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from grpo.config import UserError, above, at_least, require, within


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
    max_skipped_steps: int = 3
    """stop after this many optimiser steps in a row skipped for a non-finite loss or gradient norm [D1]"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9])."""
        above(self, "learning_rate", 0)
        at_least(self, "weight_decay", 0)
        within(self, "warmup_ratio", 0, 1)
        at_least(self, "max_grad_norm", 0, why="0 = no clipping")
        at_least(self, "max_skipped_steps", 1)
        if hasattr(self, "use_lora"):  # the model of a training script (grpo.models.ModelSettings)
            require(self, "use_lora", self.use_lora or not self.load_in_4bit,
                    "must be true with load_in_4bit = true: 4-bit weights are frozen, only a LoRA adapter trains")

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


class NonFiniteStop(UserError):
    """Too many optimiser steps in a row had a non-finite loss or gradient norm [D1] (every rank agrees)."""

    every_rank = True


class GuardedStep:
    """Clip the gradient norm, then step the optimiser and the schedule, unless the loss or the norm is
    not finite: then skip, count, and stop after `max_skipped` skips in a row [D1].

        step = GuardedStep(params, optimizer, scheduler, max_grad_norm=1.0, max_skipped=3)
        grad_norm, applied = step(loss_finite=...)      # after the gradients are summed over ranks
    """

    def __init__(self, params: list[torch.Tensor], optimizer, scheduler, *, max_grad_norm: float, max_skipped: int):
        self.params, self.optimizer, self.scheduler = params, optimizer, scheduler
        self.max_grad_norm, self.max_skipped = max_grad_norm, max_skipped
        self.skipped_in_a_row = 0

    def __call__(self, *, loss_finite: bool = True) -> tuple[float, bool]:
        clip = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if loss_finite and math.isfinite(grad_norm):
            self.optimizer.step()
            self.scheduler.step()
            self.skipped_in_a_row = 0
            return grad_norm, True
        self.optimizer.zero_grad(set_to_none=True)  # [D1] nothing of this step reaches the weights
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.max_skipped:
            raise NonFiniteStop(f"{self.skipped_in_a_row} optimiser steps in a row had a non-finite "
                                f"{'loss' if not loss_finite else 'gradient norm'} ({grad_norm}) and were "
                                "skipped; stopping (max_skipped_steps). The weights were never updated with "
                                "them; check the rewards and the learning rate")
        return grad_norm, False
