"""The SEGA objective: Self-Evaluated Group Advantage (GEM / GenPref-SEGA, arXiv 2511.13007, Eq. 2).

Per prompt q with k sampled candidates, rewards r_i from sega.filtering (identity S_i or softmax(S/τ)):

    A_i  = r_i − mean_{j valid}(r_j)                                   adv_norm = "center" (default)
    A_i  = (r_i − mean(r)) / (std(r) + 1e-8)  if std(r) > 1e-6, else r_i − mean(r)   "zscore"
    L_q  = −(1/k_valid) Σ_{i valid} sg[A_i] · Σ_t m_{i,t} lp_θ(a_{i,t})
    L    = (1/B) Σ_q L_q

    Options (all off by default):
    length-normalised   Σ_t m lp_θ  →  (1/|a_i|) Σ_t m lp_θ
    PPO ratio + clip    −A·lp_θ     →  ℓ = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A),  ρ = exp(lp_θ − lp_old)
    k3 KL               ℓ           →  ℓ + β·kl_k3(lp_θ, lp_ref), aggregated like ℓ

Symbol → code:

    r_i, A_i           rewards, advantages           (B, k) fp32; NaN reward = invalid candidate
    valid, k_valid     valid (B, k) bool; valid.sum(1)
    lp_θ, lp_old, lp_ref   logp, old_logp, ref_logp  (N, T), N = B·k, candidate i of prompt b at row b·k+i
    m_{i,t}, |a_i|     completion_mask (N, T) bool; its row sums
    ε_low, ε_high, β   eps_low, eps_high, beta
    B                  num_prompts (the whole generation batch when the batch is split)

Implementation details:

[D1] "center" is grpo.advantages.group_advantages(scale_rewards="none") (Dr. GRPO's centring): invalid
     (NaN) rewards are left out of the mean, and a group whose valid rewards are all equal, or that has
     fewer than two, gets A = 0 exactly, so equal scores give an exactly zero gradient.
[D2] "zscore" follows the official code: the std is unbiased (k_valid − 1) and only divides when it
     exceeds 1e-6, with 1e-8 added to it; otherwise the centred value is kept. Doubling S (identity
     mapping) leaves it unchanged up to that 1e-8.
[D3] sg[A]: advantages are detached. Without old_logp the per-token term is −A·lp_θ, the paper's
     REINFORCE-style loss (one step per sample). Passing old_logp switches on the PPO ratio and clip
     (grpo.loss.clipped_surrogate), required when samples are reused; at ρ = 1 its gradient equals
     the unclipped one.
[D4] Aggregation: token sum per candidate (or token mean when length-normalised), mean over the k_valid
     candidates of the prompt, mean over prompts. Prompts with k_valid = 0 add 0 but count in B
     (a constant normaliser). With `num_prompts` = the B of the whole generation batch, the losses of
     micro-batches (whole prompts each) sum to the full-batch loss, as grpo.aggregation [A1].
[D5] Padding, post-EOS positions and invalid candidates are zeroed (torch.where) before any exp or
     product, so they may hold anything (NaN) and get exactly zero gradient.
[D6] Math in fp32 (fp64 if given fp64); masks are bool; stats are detached 0-dim tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from grpo.advantages import group_advantages
from grpo.kl import kl_k3
from grpo.loss import clipped_surrogate, clipped_tokens


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # [D6]


def sega_advantages(rewards: torch.Tensor, *, adv_norm: Literal["center", "zscore"] = "center") -> torch.Tensor:
    """A_i = r_i − mean(r) ("center"), or divided by std(r) + 1e-8 when std(r) > 1e-6 ("zscore").

    Args: rewards (B, k) float, NaN = invalid candidate. Returns (B, k) fp32, 0 for invalid [D1][D2].
    """
    if adv_norm not in ("center", "zscore"):
        raise ValueError(f"adv_norm must be 'center' or 'zscore', got {adv_norm!r}")
    centred = group_advantages(rewards.detach(), scale_rewards="none")  # (B, k)  [D1]
    if adv_norm == "center":
        return centred
    k_valid = (~rewards.isnan()).sum(dim=1, keepdim=True)  # (B, 1)
    std = (centred.square().sum(dim=1, keepdim=True) / (k_valid - 1).clamp(min=1)).sqrt()  # (B, 1)  [D2]
    return torch.where(std > 1e-6, centred / (std + 1e-8), centred)  # (B, k)  [D2]


@dataclass
class SegaLossStats:
    """Detached 0-dim tensors [D6]; token means over the valid candidates' completion tokens."""
    pg_loss: torch.Tensor  # this batch's share of the policy term (no KL)
    kl: torch.Tensor | None  # mean k3 KL to the reference; None without ref_logp
    ratio_mean: torch.Tensor  # mean ρ (1 without old_logp)
    clip_fraction: torch.Tensor  # fraction of tokens where the clip is active (0 without old_logp)
    k_valid_mean: torch.Tensor  # mean number of valid candidates per prompt
    num_tokens: torch.Tensor  # Σ m over valid candidates: the weight for combining micro-batch stats


def sega_loss(logp: torch.Tensor, advantages: torch.Tensor, completion_mask: torch.Tensor,
              valid: torch.Tensor, *, length_normalize: bool = False, old_logp: torch.Tensor | None = None,
              eps_low: float = 0.2, eps_high: float = 0.2, ref_logp: torch.Tensor | None = None,
              beta: float = 0.0, num_prompts: int | None = None) -> tuple[torch.Tensor, SegaLossStats]:
    """L = (1/B) Σ_q −(1/k_valid) Σ_{i valid} sg[A_i] · w_i Σ_t m_{i,t} lp_θ, w_i = 1 or 1/|a_i|  (Eq. 2),
    with −A·lp_θ replaced by the clipped surrogate when old_logp is given, plus β·kl_k3 [D3][D4].

    Args:
        logp: (N, T) log-probs of the sampled tokens under π_θ (carries grad), N = B·k, any float dtype.
        advantages: (B, k) from `sega_advantages`. completion_mask: (N, T) bool. valid: (B, k) bool.
        old_logp, ref_logp: (N, T) behaviour / reference log-probs (no grad), or None.
        num_prompts: B of the whole generation batch when this is a micro-batch [D4]; default B.
    Returns:
        (loss () fp32 with grad, SegaLossStats).
    """
    b, k = advantages.shape
    n, t = logp.shape
    assert n == b * k, f"logp has {n} rows, advantages (B, k) = {(b, k)} needs B·k"
    assert completion_mask.shape == (n, t) and completion_mask.dtype == torch.bool, "completion_mask: (N, T) bool"
    assert valid.shape == (b, k) and valid.dtype == torch.bool, "valid: (B, k) bool"
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp")
    mask = completion_mask & valid.reshape(n, 1)  # (N, T)  [D5]

    def clean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, _fp32(x), 0.0)  # (N, T)  [D5][D6]

    logp = clean(logp)
    adv = torch.where(valid, _fp32(advantages.detach()), 0.0).reshape(n, 1)  # (N, 1)  sg[A]  [D3]
    # 1. per-token policy term
    if old_logp is None:
        ratio = torch.ones_like(logp)  # (N, T)
        per_token = -adv * logp  # (N, T)  [D3]
    else:
        ratio = torch.exp(logp - clean(old_logp))  # (N, T)
        per_token = clipped_surrogate(ratio, adv, eps_low=eps_low, eps_high=eps_high)  # (N, T)  [D3]
    kl = None if ref_logp is None else kl_k3(logp, clean(ref_logp))  # (N, T)
    if beta != 0.0:
        per_token = per_token + beta * kl  # (N, T)

    # 2. aggregate: candidates → prompts → batch  [D4]
    def aggregate(x: torch.Tensor) -> torch.Tensor:
        per_seq = torch.where(mask, x, 0.0).sum(-1)  # (N,)
        if length_normalize:
            per_seq = per_seq / mask.sum(-1).clamp(min=1)  # (N,)
        per_prompt = per_seq.view(b, k).sum(1) / valid.sum(1).clamp(min=1)  # (B,)
        return per_prompt.sum() / (num_prompts or b)  # ()

    loss = aggregate(per_token)
    # 3. stats
    with torch.no_grad():
        count = mask.sum()

        def mean(x: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, x, 0.0).sum() / count.clamp(min=1)  # ()

        pg_loss = loss.detach() if beta == 0.0 else aggregate(per_token - beta * kl)
        low, high = clipped_tokens(ratio, adv, eps_low=eps_low, eps_high=eps_high)  # (N, T) bool
        stats = SegaLossStats(pg_loss=pg_loss, kl=None if kl is None else mean(kl), ratio_mean=mean(ratio),
                              clip_fraction=mean((low | high).to(ratio.dtype)),
                              k_valid_mean=valid.sum(1).to(ratio.dtype).mean(), num_tokens=count)
    return loss, stats
