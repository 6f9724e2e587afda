"""Rewards → advantages: the group-relative baseline of GRPO and the reward shaping used with it.

Objective (DeepSeekMath, arXiv 2402.03300 §4.1.2, outcome supervision; Dr. GRPO arXiv 2503.20783 §3.1):

    r_i = Σ_f w_f · r_{i,f}                                  weighted sum over reward functions
    A_i = (r_i − mean_g(r)) / (std(r) + ε)                   scale_rewards = "group" | "batch"
    A_i =  r_i − mean_g(r)                                   scale_rewards = "none" (Dr. GRPO)

    Soft overlong punishment (DAPO, arXiv 2503.14476 §3.4, Eq. 13), added to the reward:
    R_len(L) = 0                                  if L ≤ L_max − L_cache
             = ((L_max − L_cache) − L) / L_cache   if L_max − L_cache < L ≤ L_max
             = −1                                 if L > L_max

Symbol → code:

    r_{i,f}   per_function[b, g, f]   reward of completion g of prompt b from reward function f
    w_f       weights[f]
    r_i       rewards[b, g]           (B, G): groups stay a dimension until the model boundary
    mean_g    mean over dim 1 (the G completions of one prompt)
    ε         eps
    A_i       advantages[b, g]
    L, L_max, L_cache   lengths, max_len, cache_len

Implementation details:

[D1] std is the unbiased (Bessel, G − 1) estimate, as in verl / Dr. GRPO / GEM and TRL; G ≥ 2 is required.
[D2] ε is added to the std, not inside a sqrt (TRL, verl): A = (r − mean) / (std + ε), default ε = 1e-4.
[D3] "batch" (TRL `scale_rewards="batch"`): the mean stays per group, the std is taken over every valid
     reward of the batch. Call this on the *whole* generation batch (all ranks gathered), never on a shard.
[D4] A zero-variance group (all valid rewards exactly equal, or fewer than 2 valid rewards) gets A = 0
     exactly, whatever `scale_rewards`: we overwrite rather than trust (r − mean) to cancel in floating point.
     "Zero variance" is exact equality (max == min), the same test `zero_std_groups` reports, so the logged
     `frac_reward_zero_std` and the groups that carry no signal are always the same set (TRL logs
     isclose(std, 0), atol 1e-8, a slightly larger set).
[D5] A reward function that returns None for a completion is recorded as NaN by the caller. Following TRL,
     the weighted sum skips NaN terms (nansum); a completion for which *every* function returned None is
     unscorable: its reward is NaN, it is left out of its group's mean and std, and its advantage is 0
     (TRL 1.x; older TRL let nansum turn it into a reward of 0, biasing the group baseline).
[D6] Everything runs in fp32 (fp64 if the rewards are fp64); rewards never carry gradient.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # [D6]


def weighted_rewards(per_function: torch.Tensor, weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """r_i = Σ_f w_f · r_{i,f}, skipping NaN (None) terms; NaN when every term is NaN [D5].

    Args:
        per_function: (B, G, F) float, NaN where a reward function returned None.
        weights: (F,) one weight per reward function.
    Returns:
        (B, G) fp32 weighted reward, NaN for unscorable completions.
    """
    per_function = _fp32(per_function)
    weights = torch.as_tensor(weights, dtype=per_function.dtype, device=per_function.device)
    assert per_function.dim() == 3 and weights.shape == per_function.shape[-1:], (
        f"per_function must be (B, G, F) and weights (F,), "
        f"got {tuple(per_function.shape)}, {tuple(weights.shape)}")
    rewards = (per_function * weights).nansum(dim=-1)  # (B, G)  [D5]
    unscorable = per_function.isnan().all(dim=-1)  # (B, G)
    return rewards.masked_fill(unscorable, float("nan"))  # [D5]


def zero_std_groups(rewards: torch.Tensor) -> torch.Tensor:
    """True for groups whose valid (non-NaN) rewards are all exactly equal, or that have < 2 of them [D4].

    Used for `frac_reward_zero_std` and for dynamic sampling (DAPO §3.2: drop or resample such groups).

    Args:
        rewards: (B, G) float, NaN = unscorable.
    Returns:
        (B,) bool.
    """
    valid = ~rewards.isnan()  # (B, G)
    hi = rewards.masked_fill(~valid, -float("inf")).amax(dim=1)  # (B,)
    lo = rewards.masked_fill(~valid, float("inf")).amin(dim=1)  # (B,)
    return (hi == lo) | (valid.sum(dim=1) < 2)  # (B,)  [D4]


def group_advantages(rewards: torch.Tensor, *, scale_rewards: ScaleRewards = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean_g(r)) / (std(r) + ε), or r_i − mean_g(r) when scale_rewards = "none".

    std is the unbiased std of the group ("group") or of the whole batch ("batch") [D1][D3].

    Args:
        rewards: (B, G) float weighted rewards, NaN = unscorable [D5].
        scale_rewards: "group" (GRPO), "batch" (TRL), or "none" (Dr. GRPO).
        eps: added to the std [D2].
    Returns:
        (B, G) fp32 advantages; exactly 0 for zero-variance groups [D4] and unscorable completions [D5].
    """
    assert rewards.dim() == 2 and rewards.shape[1] >= 2, (
        f"rewards must be (B, G) with G >= 2 completions per prompt [D1], got {tuple(rewards.shape)}")
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    rewards = _fp32(rewards)
    valid = ~rewards.isnan()  # (B, G)  [D5]
    count = valid.sum(dim=1, keepdim=True)  # (B, 1)
    mean = rewards.masked_fill(~valid, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)  # (B, 1)
    centred = torch.where(valid, rewards - mean, 0.0)  # (B, G)
    if scale_rewards == "group":
        var = centred.square().sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)  # (B, 1)  [D1]
        advantages = centred / (var.sqrt() + eps)  # (B, G)  [D2]
    elif scale_rewards == "batch":
        flat = rewards[valid]  # (n_valid,)
        std = flat.std() if flat.numel() >= 2 else flat.new_zeros(())  # ()  [D1][D3]
        advantages = centred / (std + eps)  # (B, G)  [D2]
    else:
        advantages = centred  # (B, G)
    no_signal = zero_std_groups(rewards)[:, None] | ~valid  # (B, G)
    return advantages.masked_fill(no_signal, 0.0)  # [D4][D5]


def overlong_penalty(lengths: torch.Tensor, *, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476 Eq. 13), a reward term in [−1, 0]:

        R_len(L) = 0                                   L ≤ L_max − L_cache
                 = ((L_max − L_cache) − L) / L_cache   L_max − L_cache < L ≤ L_max
                 = −1                                  L > L_max

    Args:
        lengths: (...) int or float completion lengths |o_i| (tokens, up to and including EOS).
        max_len: L_max, the length at which the penalty reaches −1.
        cache_len: L_cache, the width of the linear ramp, 0 < L_cache ≤ L_max.
    Returns:
        (...) fp32 penalty, same shape as `lengths`.
    """
    assert 0 < cache_len <= max_len, f"need 0 < cache_len <= max_len, got {cache_len}, {max_len}"
    length = _fp32(torch.as_tensor(lengths))
    start = max_len - cache_len  # L_max − L_cache: the ramp starts here
    ramp = (start - length) / cache_len  # (...) in (−1, 0] on the ramp
    return torch.where(length <= start, 0.0, torch.where(length <= max_len, ramp, -1.0))  # (...)
