"""One generation batch of the GRPO loop: its rewards, the replacement of flat groups, its metrics.

    score_completions   rewards [B, G] (weighted sum, float64) and per function, from the task's functions
    replace_flat_groups dynamic sampling `resample`: informative groups of another batch in place of flat ones
    step_metrics        the per-step metrics, over every rank (glossary in scripts/train_grpo.py)
    mismatch_metrics    TRL's sampler–trainer metrics (grpo.correction) when vLLM or our bf16 loop sampled [D12]

The trainer (grpo/trainer.py) tags the lines these serve with its own [Dn] notes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grpo import distributed as dd
from grpo.advantages import overlong_penalty, weighted_rewards, zero_std_groups
from grpo.config import UserError
from grpo.rollout import Rollout
from grpo.tasks import task_rewards


@dataclass
class Batch:
    """One generation batch on this rank, groups kept together (rows i·G … i·G+G−1)."""

    rollout: Rollout
    rewards: torch.Tensor  # [B, G] weighted total, float64
    per_function: torch.Tensor  # [B, G, F] float64, NaN = None
    advantages: torch.Tensor  # [B, G] fp32
    non_finite: int = 0  # ±inf rewards treated as None on this rank (non_finite_rewards = none) [D7]


def score_completions(task, rows: list[dict[str, Any]], rollout: Rollout, *, G: int, weights: list[float],
                      overlong: tuple[int, int] | None, non_finite: str = "error"
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rewards [B, G] (weighted sum), per function [B, G, F], float64, and the count of ±inf rewards
    treated as None [D7]; None from a function becomes NaN."""
    B = len(rows)
    per_function = task_rewards(task, rows, rollout.completions, G=G, non_finite=non_finite)  # [B·G, F]
    per_function = per_function.view(B, G, -1)  # [B, G, F] float64
    infinite = per_function.isinf()  # [B, G, F]: only with non_finite = "none" [D7]
    per_function = per_function.masked_fill(infinite, float("nan"))
    total = weighted_rewards(per_function, weights)  # [B, G] float64
    if overlong is not None:  # [D5]
        lengths = rollout.lengths.view(B, G).float().cpu()
        total = total + overlong_penalty(lengths, max_len=overlong[0], cache_len=overlong[1])
    if total.isinf().any():  # [D7]
        b, g = total.isinf().nonzero()[0].tolist()
        raise UserError(f"the weighted reward of completion {g} of prompt row {b} is {total[b, g].item()}: "
                        f"reward_weights {weights} overflow float64; scale the rewards or the weights")
    return total, per_function, int(infinite.sum())



def mismatch_metrics(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """TRL's sampler–trainer metrics over the whole batch of every rank, from each micro-batch's
    grpo.correction.mismatch_stats (local sums, counts and extrema [C6]) [D12]."""
    sums = dd.all_reduce_sum(torch.stack([sum(p[k] for p in parts).double() for k in
                                          ("logp_diff_sum", "logp_diff_count", "weight_sum", "weight_count")]))
    extremes = torch.stack([torch.stack([p["logp_diff_max"], -p["weight_min"], p["weight_max"]]).double()
                            for p in parts]).amax(0)  # [3] over micro-batches (the min as −max of −)
    extremes = dd.all_gather_rows(extremes[None].to(sums.device)).amax(0)  # over ranks
    counted = float(sums[3]) > 0  # TRL logs 0 where nothing was counted
    return {"sampling/sampling_logp_difference/mean": float(sums[0] / sums[1].clamp(min=1)),
            "sampling/sampling_logp_difference/max": float(extremes[0]),
            "sampling/importance_sampling_ratio/min": float(-extremes[1]) if counted else 0.0,
            "sampling/importance_sampling_ratio/mean": float(sums[2] / sums[3].clamp(min=1)),
            "sampling/importance_sampling_ratio/max": float(extremes[2])}


def replace_flat_groups(batch: Batch, extra: Batch, G: int) -> Batch:
    """Swap zero-variance groups of `batch` for informative groups of `extra` (same count B) [D4]."""
    flat_b, flat_e = zero_std_groups(batch.rewards), ~zero_std_groups(extra.rewards)
    B = batch.rewards.shape[0]
    take = [i for i in range(B) if flat_e[i]]
    slots = [i for i in range(B) if flat_b[i]]
    r, e = batch.rollout, extra.rollout
    for dst, src in zip(slots, take):
        d, s = slice(dst * G, dst * G + G), slice(src * G, src * G + G)
        r.truncated[d] = e.truncated[s]
        for field in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logp", "entropy"):
            setattr(r, field, _copy_rows_padded(getattr(r, field), getattr(e, field), d, s,
                                                left=field.startswith("prompt")))
        r.completions[d] = e.completions[s]
        for name in ("rewards", "per_function", "advantages"):
            getattr(batch, name)[dst] = getattr(extra, name)[src]
    return batch


def _copy_rows_padded(dst: torch.Tensor, src: torch.Tensor, d: slice, s: slice, *, left: bool) -> torch.Tensor:
    """dst[d] = src[s], padding both to the wider one (left padding for prompts, right for completions)."""
    width = max(dst.shape[1], src.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        extra = width - x.shape[1]
        if extra == 0:
            return x
        fill = torch.zeros(x.shape[0], extra, dtype=x.dtype, device=x.device)
        return torch.cat([fill, x], 1) if left else torch.cat([x, fill], 1)

    dst, src = pad(dst), pad(src)
    dst[d] = src[s]
    return dst


def step_metrics(batch: Batch, update: dict[str, float], timing: dict[str, float], reward_names: list[str],
                 *, lr: float) -> dict[str, Any]:
    """Per-step metrics (glossary in scripts/train_grpo.py), averaged over all ranks."""
    r = batch.rollout
    rewards = dd.all_gather_rows(batch.rewards.to(r.completion_ids.device)).cpu()  # [B_total, G]
    per_fn = dd.all_gather_rows(batch.per_function.to(r.completion_ids.device)).cpu()  # [B_total, G, F]
    adv = dd.all_gather_rows(batch.advantages.to(r.completion_ids.device)).cpu()
    lengths = dd.all_gather_rows(r.lengths.float()).cpu()  # [N_total]
    truncated = dd.all_gather_rows(r.truncated.float()).cpu()
    mean_entropy = dd.all_reduce_sum(torch.stack([(r.entropy * r.completion_mask).sum(),
                                                  r.completion_mask.sum().float()])).cpu()
    m: dict[str, Any] = {
        "reward": _nanmean(rewards), "reward_std": _nanstd(rewards),
        "frac_reward_zero_std": zero_std_groups(rewards).float().mean().item(),
        "advantage_mean": adv.mean().item(), "advantage_std": adv.std().item() if adv.numel() > 1 else 0.0,
        "advantage_abs_max": adv.abs().max().item(),
        "completion_length": lengths.mean().item(), "completion_length_min": lengths.min().item(),
        "completion_length_max": lengths.max().item(), "truncated_frac": truncated.mean().item(),
        "sampling_entropy": (mean_entropy[0] / mean_entropy[1].clamp(min=1)).item(), "lr": lr,
        "rewards/non_finite": float(dd.all_reduce_sum(torch.tensor(float(batch.non_finite),
                                                                   device=r.completion_ids.device))),
    }
    for j, name in enumerate(reward_names):
        m[f"rewards/{name}/mean"] = _nanmean(per_fn[..., j])
        m[f"rewards/{name}/std"] = _nanstd(per_fn[..., j])
    m.update(update)
    total_time = sum(timing.values())
    m.update(timing)
    m["tokens_per_second"] = float(lengths.sum()) / max(total_time, 1e-9)
    return m


def _nanmean(x: torch.Tensor) -> float:
    v = x[~torch.isnan(x)]
    return v.mean().item() if v.numel() else float("nan")


def _nanstd(x: torch.Tensor) -> float:
    v = x[~torch.isnan(x)]
    return v.std().item() if v.numel() > 1 else 0.0
