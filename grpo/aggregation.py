"""Aggregation: per-token losses → this micro-batch's share of the whole generation batch's loss.

    Agg over the generation batch (N sequences, all micro-batches and ranks), L = max_completion_length,
    x (N, T) per-token loss, m (N, T) completion mask:
      grpo     (1/N) Σ_i (1/|o_i|) Σ_t m·x     sequence-mean of token-means (DeepSeekMath Eq. 3)
      dapo     Σ_{i,t} m·x / Σ_{i,t} m          token-mean over the whole batch (DAPO §3.3)
      dr_grpo  Σ_{i,t} m·x / (N · L)            constant normaliser (Dr. GRPO §3.1)
      bnpo     Σ_{i,t} m·x / Σ_{i,t} m          over the *local* micro-batch only
      luspo    (1/N) Σ_i Σ_t m·x                each sequence's sum: |o_i| × its token-mean (LUSPO)

Implementation details:
[A1] Every aggregator returns this micro-batch's *share*: the normalisers count the whole generation batch,
     so summing the losses over micro-batches (and ranks) gives the full-batch loss and the gradient of an
     optimiser step does not depend on the split. The ranks' gradients are summed (grpo.distributed [D1];
     FSDP2 with its divide factor 1, grpo.sharding). Fully masked sequences still count in N (as TRL's
     `.mean()` over rows).
[A2] bnpo is by definition the local token-mean and is NOT split-invariant. Its share is weighted by the
     micro-batch's fraction of sequences, N_local / N: equal micro-batches give TRL's `loss / grad_accum`,
     a single micro-batch gives dapo.
"""
from __future__ import annotations

import torch

Count = int | float | torch.Tensor  # a token or sequence count, possibly all-reduced (0-dim tensor)


def _at_least_one(count: Count) -> Count:
    return count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)  # no host sync


def aggregate_grpo(x: torch.Tensor, mask: torch.Tensor, *, num_sequences: Count, num_tokens: Count,
                   max_completion_length: int) -> torch.Tensor:
    """(1/N) Σ_i (1/|o_i|) Σ_t m·x: sequence-mean of token-means (DeepSeekMath Eq. 3)."""
    seq_mean = x.masked_fill(~mask, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)  # (N_local,)
    return seq_mean.sum() / num_sequences  # [A1]


def aggregate_dapo(x: torch.Tensor, mask: torch.Tensor, *, num_sequences: Count, num_tokens: Count,
                   max_completion_length: int) -> torch.Tensor:
    """Σ_{i,t} m·x / Σ_{i,t} m over the whole generation batch (DAPO §3.3, token-level loss)."""
    return x.masked_fill(~mask, 0.0).sum() / _at_least_one(num_tokens)  # [A1]


def aggregate_dr_grpo(x: torch.Tensor, mask: torch.Tensor, *, num_sequences: Count, num_tokens: Count,
                      max_completion_length: int) -> torch.Tensor:
    """Σ_{i,t} m·x / (N · L) (Dr. GRPO §3.1: a constant replaces the length normalisation)."""
    return x.masked_fill(~mask, 0.0).sum() / (num_sequences * max_completion_length)  # [A1]


def aggregate_bnpo(x: torch.Tensor, mask: torch.Tensor, *, num_sequences: Count, num_tokens: Count,
                   max_completion_length: int) -> torch.Tensor:
    """(N_local / N) · Σ_{i,t} m·x / Σ_{i,t} m over the local micro-batch: NOT split-invariant [A2]."""
    local_mean = x.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)  # ()
    return local_mean * (mask.shape[0] / num_sequences)  # [A2]


def aggregate_luspo(x: torch.Tensor, mask: torch.Tensor, *, num_sequences: Count, num_tokens: Count,
                    max_completion_length: int) -> torch.Tensor:
    """(1/N) Σ_i Σ_t m·x: each sequence's sum, |o_i| × its token-mean (LUSPO; grpo.loss [D12])."""
    return x.masked_fill(~mask, 0.0).sum() / num_sequences  # [A1]


AGGREGATE = {"grpo": aggregate_grpo, "dapo": aggregate_dapo, "dr_grpo": aggregate_dr_grpo,
             "bnpo": aggregate_bnpo, "luspo": aggregate_luspo}
