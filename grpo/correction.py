"""Sampler–trainer mismatch: the importance-sampling weight of each token (ALGORITHMS.md §5).

When the completions come from another engine or precision than the trainer's forward (vLLM, a bf16
sampler), the sampler's log-probs lp_s differ from the trainer's lp_old even with equal weights, and the
update is off-policy. The trainer computes lp_old itself (no-grad forward) and multiplies each token's
surrogate by a stop-gradient weight (TRL 1.16 `vllm_importance_sampling_*`; truncated IS from Yao et al.
2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"; masked IS):

    d_{i,t} = m·(lp_old − lp_s)                    0 where lp_s is NaN (unscored) [C1] or m = 0 [C2]
    token    w_{i,t} = exp(d_{i,t})                (N, T)
    sequence w_i     = exp(Σ_t d_{i,t})            (N, 1): the product of the token ratios
    *_truncate  w ← clip(w, C_min, C_max)          a None bound is no bound
    *_mask      w ← w·[C_min ≤ w ≤ C_max]          None bounds are ∓inf

grpo.loss.policy_loss applies it as ℓ ← sg[w]·ℓ (vespo: Σ_t log w into its own log-weight).

Symbol → code:

    lp_old, lp_s    old_logp, sampling_logp    (N, T) trainer / sampler log-probs of the sampled tokens
    m               completion_mask            (N, T) bool
    d, w            diff, weights              (N, T); w (N, T) or (N, 1)
    C_min, C_max    clip_min, clip_max         defaults None, 3.0 (TRL's; its default mode is sequence_mask)

Implementation details:

[C1] A token whose lp_s is NaN (the sampler could not score it), or any NaN difference (inf − inf), adds
     d = 0: its token weight is 1 before clipping (TRL's nan_to_num). Only the NaN is replaced.
[C2] Padding (¬m) may hold anything (NaN, ±inf): d is zeroed there before any sum or exp, so padding changes
     no weight. A padding token's own weight is that of d = 0 (1, then clipped or masked as any other), as
     TRL's; the loss never reads it. A sequence without completion tokens gets exp(0) = 1, clipped likewise.
[C3] No NaN can arise. Each d is first clamped to ±1e4 nats, so a sequence sum is finite and never inf − inf.
     The clamp changes no token weight (exp overflows past ~89 nats in fp32, ~710 in fp64); it reaches only
     a log-prob below −1e4, a probability 0 in every float dtype (lp_s = −inf: a token the sampler could
     not have drawn), and a sequence holding one counts it as ±1e4. exp then gives a value in [0, +inf]:
     an overflowing w (e.g. Σ_t d = +100 nats in fp32) is +inf, which clip holds at C_max (truncate) and
     the mask sets to 0 (mask), as TRL. Without C_max an infinite w is held at the dtype's largest finite
     value, so that sg[w]·ℓ = 0 where ℓ = 0 (no inf·0); the loss may still overflow to inf there, which
     is what an unbounded weight asks for.
[C4] Math in fp32 (fp64 if given fp64); no gradient (the weight is a constant of the update).
[C5] Bounds as TRL's config checks them: C_min < C_max when both are set; a *_truncate mode needs one.
[C6] Stats (mismatch_stats) are local sums, counts and extrema, so the trainer can all-reduce them
     (sum, sum, max; sum, sum, min, max) across micro-batches and ranks before dividing. Sequence-mode
     ratios count the sequences with at least one completion token (TRL flattens all rows, so a row with
     no tokens counts there at its weight exp(0) = 1; it weights nothing in the loss). TRL averages the
     per-rank means; the combined sums here give the token (or sequence) mean of the whole batch.
"""
from __future__ import annotations

import math

import torch

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
MAX_ABS_DIFF = 1e4  # [C3] nats; exp(±1e4) is +inf / 0 in fp64 too


def _diff(old_logp: torch.Tensor, sampling_logp: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """d = m·(lp_old − lp_s), NaN → 0 [C1], padding → 0 [C2], in fp32 or fp64 [C4]. Returns (N, T)."""
    dtype = torch.promote_types(torch.promote_types(old_logp.dtype, sampling_logp.dtype), torch.float32)
    diff = old_logp.to(dtype) - sampling_logp.to(dtype)  # (N, T)
    return torch.where(completion_mask, diff.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf), 0.0)


@torch.no_grad()
def sampler_weights(old_logp: torch.Tensor, sampling_logp: torch.Tensor, completion_mask: torch.Tensor, *,
                    mode: str, clip_min: float | None = None, clip_max: float | None = 3.0) -> torch.Tensor:
    """w = exp(d) per token, or exp(Σ_t d) per sequence, then truncated (clip) or masked (0 outside) [C1-C5].

    Args:
        old_logp: (N, T) the trainer's log-probs of the sampled tokens (no grad), any float dtype.
        sampling_logp: (N, T) the sampler's, NaN where it could not score a token [C1].
        completion_mask: (N, T) bool; anything on padding [C2].
        mode: one of IS_MODES. clip_min, clip_max: C_min, C_max; None = no bound.
    Returns:
        (N, T) for token modes, (N, 1) for sequence modes; fp32 (fp64 if given fp64), finite, ≥ 0, no grad.
    """
    n, t = completion_mask.shape
    assert completion_mask.dtype == torch.bool, "completion_mask: bool"
    assert old_logp.shape == sampling_logp.shape == (n, t), "old_logp, sampling_logp: (N, T) like the mask"
    if mode not in IS_MODES:
        raise ValueError(f"mode must be one of {IS_MODES}, got {mode!r}")
    if clip_min is not None and clip_max is not None and not clip_min < clip_max:
        raise ValueError(f"clip_min ({clip_min}) must be less than clip_max ({clip_max}) [C5]")
    level, rule = mode.split("_")
    if rule == "truncate" and clip_min is None and clip_max is None:
        raise ValueError(f"mode {mode!r} needs clip_min or clip_max [C5]")
    diff = _diff(old_logp, sampling_logp, completion_mask).clamp(-MAX_ABS_DIFF, MAX_ABS_DIFF)  # (N, T) [C3]
    if level == "sequence":
        diff = diff.sum(-1, keepdim=True)  # (N, 1) log Π_t ratio, finite [C3]
    weights = torch.exp(diff)  # (N, T) or (N, 1), in [0, +inf]
    if rule == "truncate":
        weights = weights.clamp(min=clip_min, max=clip_max)
    else:
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        weights = weights.masked_fill((weights < low) | (weights > high), 0.0)
    return weights.clamp(max=torch.finfo(weights.dtype).max)  # an unbounded +inf held finite [C3]


@torch.no_grad()
def mismatch_stats(old_logp: torch.Tensor, sampling_logp: torch.Tensor, completion_mask: torch.Tensor,
                   weights: torch.Tensor, *, mode: str) -> dict[str, torch.Tensor]:
    """Local reductions of |lp_old − lp_s| and of w, for combining across micro-batches and ranks [C6].

    The trainer logs TRL's metrics from the combined values:
        sampling/sampling_logp_difference/mean  = Σ logp_diff_sum / Σ logp_diff_count
        sampling/sampling_logp_difference/max   = max logp_diff_max
        sampling/importance_sampling_ratio/min  = min weight_min
        sampling/importance_sampling_ratio/mean = Σ weight_sum / Σ weight_count
        sampling/importance_sampling_ratio/max  = max weight_max
    |lp_old − lp_s| runs over the completion tokens whose difference is not NaN (an unscored token is left
    out, not counted 0, as TRL); w over the completion tokens (token modes) or over the sequences with a
    completion token (sequence modes) [C6].
    Args: old_logp, sampling_logp (N, T); completion_mask (N, T) bool; weights (N, T) or (N, 1) from
        sampler_weights with the same mode.
    Returns: 0-dim fp32 (fp64) tensors logp_diff_sum, logp_diff_count, logp_diff_max, weight_sum,
        weight_count, weight_min, weight_max. Empty selections give the identities of their reduction
        (sums and counts 0, maxima 0 as both quantities are ≥ 0, weight_min +inf): the trainer logs 0, as
        TRL, when a combined count is 0.
    """
    if mode not in IS_MODES:
        raise ValueError(f"mode must be one of {IS_MODES}, got {mode!r}")
    dtype = torch.promote_types(torch.promote_types(old_logp.dtype, sampling_logp.dtype), torch.float32)
    gap = (old_logp.to(dtype) - sampling_logp.to(dtype)).abs()  # (N, T)
    scored = completion_mask & ~gap.isnan()  # (N, T)
    gap = torch.where(scored, gap, 0.0)  # (N, T) padding and unscored tokens → 0 (the max's identity)
    if mode.startswith("sequence"):
        where = completion_mask.any(-1, keepdim=True)  # (N, 1) sequences with a completion token [C6]
    else:
        where = completion_mask  # (N, T)
    w = weights.to(dtype)
    return dict(
        logp_diff_sum=gap.sum(), logp_diff_count=scored.sum().to(dtype), logp_diff_max=gap.max(),
        weight_sum=torch.where(where, w, 0.0).sum(), weight_count=where.sum().to(dtype),
        weight_min=torch.where(where, w, math.inf).min(), weight_max=torch.where(where, w, 0.0).max())
