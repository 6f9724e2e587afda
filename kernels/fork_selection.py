"""Forking-token selection by entropy: per-sequence top-m mean (SEGA) and batch top-k mask (80/20).

Per sequence (GEM arXiv 2511.13007, Eq. 1 second term; ALGORITHMS.md §4), over the n scored positions:

    m = max(1, ⌊top_m · n⌋)  if top_m < 1   (a fraction)        m = min(top_m, n)  if top_m ≥ 1  (a count)
    fork_mean = (1/m) Σ_{t ∈ top-m(H)} H_t                      (0 when n = 0)

Per batch ("Beyond the 80/20 rule", arXiv 2506.01939 §4; ALGORITHMS.md §3), over all N scored tokens
of the optimiser-step batch on every rank:

    k = ⌈ρ · N⌉,   selected = the k highest-entropy tokens

Symbol → code: H entropy (B, T) · scored positions mask (B, T) bool · m, k counts · ρ rho.

Implementation details:
[F1] Ties are broken by position: among equal entropies the earlier token (row-major; across ranks,
     lower rank first) wins, so exactly m (resp. k) tokens are selected and every rank agrees.
[F2] No torch.quantile (it refuses inputs above 2^24 elements and lets ties select more than ρ):
     the k-th largest value τ comes from torch.kthvalue; all tokens above τ are selected, then the
     first (k − #above) tokens equal to τ in position order.
[F3] Across DDP ranks the scored entropies are all-gathered (sizes first, then values padded to the
     largest rank), so every rank runs the same selection on the same global vector and keeps its own
     slice: the union of the rank masks is the single-process mask of the concatenated batch.
     Memory is N floats per rank (16M tokens → 64 MB).
[F4] ρ and a fractional top_m are read as the nearest fraction with denominator ≤ 10^6 and the
     counts computed in integers, so k = ⌈0.07·100⌉ = 7, not the 8 that 0.07·100 = 7.000000000000001
     gives in floats (and ⌊0.29·100⌋ = 29, not 28).
[F5] A NaN entropy at a scored position ranks below every real value (it is chosen last), and a row
     with n = 0 gives fork_mean = 0 and an empty mask.
[F6] top_m ≥ 1 must be a whole number (1.0 means one token, not 100 %).
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.distributed as dist


def _ranking_key(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lowest = torch.finfo(torch.float32).min  # NaN ranks below every real entropy [F5]
    key = torch.nan_to_num(entropy.detach().float(), nan=lowest, posinf=float("inf"), neginf=lowest)
    return key.masked_fill(~mask, float("-inf"))  # unscored positions rank below everything


def top_m_entropy_mean(entropy: torch.Tensor, mask: torch.Tensor, *, top_m: float):
    """Per row, the mean of the m highest entropies over the scored positions.

    Args:
        entropy: (B, T) float, per-token entropies. mask: (B, T) bool, True where scored.
        top_m: fraction in (0, 1) or whole count ≥ 1 [F6].
    Returns:
        (fork_mean (B,) fp32, selected (B, T) bool) with exactly m_b positions selected in row b [F1];
        fork_mean is differentiable w.r.t. entropy.
    """
    if entropy.dim() != 2 or mask.shape != entropy.shape or mask.dtype != torch.bool:
        raise ValueError(f"entropy (B, T) and bool mask of the same shape expected, got "
                         f"{tuple(entropy.shape)} and {mask.dtype} {tuple(mask.shape)}")
    if not (top_m > 0 and (top_m < 1 or float(top_m).is_integer())):
        raise ValueError(f"top_m must be a fraction in (0, 1) or a whole count >= 1, got {top_m!r}")
    B, T = entropy.shape
    n = mask.sum(-1)  # (B,)
    if top_m < 1:
        frac = Fraction(top_m).limit_denominator(10**6)  # [F4]
        m = torch.where(n > 0, (frac.numerator * n // frac.denominator).clamp_min(1), 0)  # (B,)
    else:
        m = n.clamp_max(int(top_m))  # (B,)
    order = torch.sort(_ranking_key(entropy, mask), dim=-1, descending=True, stable=True).indices  # (B, T) [F1]
    in_top = torch.arange(T, device=entropy.device)[None, :] < m[:, None]  # (B, T) in sorted order
    selected = torch.zeros_like(mask).scatter_(-1, order, in_top)  # (B, T) back to positions
    total = torch.where(selected, entropy.float(), 0.0).sum(-1)  # (B,)
    return total / m.clamp_min(1), selected  # n = 0 -> 0 / 1 = 0 [F5]


def _gather_scored(values: torch.Tensor, group) -> tuple[torch.Tensor, int]:
    """All ranks' scored values concatenated in rank order, and this rank's offset in it [F3]."""
    world = dist.get_world_size(group)
    count = torch.tensor([values.numel()], dtype=torch.int64, device=values.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    counts = [int(c.item()) for c in counts]
    padded = values.new_zeros(max(counts))
    padded[:values.numel()] = values
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    rank = dist.get_rank(group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), sum(counts[:rank])


def top_k_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, *, rho: float, process_group=None):
    """Mask of the k = ⌈ρ·N⌉ highest-entropy scored tokens of the whole batch, across ranks.

    Args:
        entropy: [...] float (e.g. (N, T)), current-policy entropies (no gradient is kept).
        mask: [...] bool, True where the token is scored. rho: ρ in (0, 1].
        process_group: DDP group; None = the default group when torch.distributed is initialised,
            otherwise this process alone.
    Returns:
        bool tensor shaped like mask; exactly k tokens are True over all ranks together [F1] [F2].
    """
    if mask.shape != entropy.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool with shape {tuple(entropy.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    local = _ranking_key(entropy, mask)[mask]  # (n_local,) scored tokens, row-major
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1
    values, offset = _gather_scored(local, process_group) if distributed else (local, 0)  # (N,)
    N = values.numel()
    k = math.ceil(Fraction(rho).limit_denominator(10**6) * N)  # [F4]
    if k >= N:
        chosen = torch.ones(N, dtype=torch.bool, device=values.device)
    else:
        tau = torch.kthvalue(values, N - k + 1).values  # k-th largest [F2]
        above, tie = values > tau, values == tau  # (N,)
        chosen = above | (tie & (tie.cumsum(0) <= k - above.sum()))  # first ties in position order [F1]
    out = torch.zeros_like(mask)
    out[mask] = chosen[offset:offset + local.numel()]
    return out
