"""The rest of TRL 1.16's policy-loss family: the CISPO, SAPO and VESPO surrogates and the off-policy mask.

Each replaces the clipped surrogate of grpo.loss for one `loss_type`; `grpo.loss.policy_loss` picks it
(LOSS_TYPES there) and aggregates it. Minimised, per token, as TRL computes them (ALGORITHMS.md §2b):

    clipped  ℓ = −min(ρ̃·A, clip(ρ, 1−ε_low, 1+ε_high)·A)       grpo.loss (grpo dapo dr_grpo bnpo luspo)
    cispo    ℓ = −sg[min(ρ, ε_max)]·A·lp_θ                          MiniMax-M1 arXiv 2506.13585 §3.1
    sapo     ℓ = −(4/τ)·σ(τ·(ρ − 1))·A,  τ = τ_pos if A > 0 else τ_neg      SAPO arXiv 2511.20347
    vespo    ℓ = −sg[φ_i]·A·lp_θ,  φ_i = exp(λ + k·log w_i − λ·w_i), φ(1) = 1    VESPO arXiv 2602.10693
             log w_i = clip(Σ_t m·clip(lp_θ − lp_old, −20, 20), log 1e-8, 20)
                       (with a sampler weight w_IS, + Σ_t m·clip(log w_IS, log 1e-8, 20) inside the outer clip)
             (k, λ) = (k_pos, λ_pos) if A_i ≥ 0 else (k_neg, λ_neg)
    mask     ℓ ← M_i·ℓ,  M_i = [A_i ≥ 0  ∨  (1/|o_i|) Σ_t m·(lp_s − sg[lp_θ]) ≤ δ_mask]
             off-policy sequence mask, DeepSeek-V3.2 arXiv 2512.02556 Eq. 9 (any loss_type)

Symbol → code:

    ρ                  ratio              (N, T) token ratio exp(lp_θ − lp_old), from grpo.loss
    A                  advantages         (N, 1)
    lp_θ, lp_old, lp_s logp, old_logp, sampling_logp   (N, T); lp_s: the sampler's log-probs
    ε_max              eps_max            CISPO's cap (the setting epsilon_high)
    τ_pos, τ_neg       temperature_pos, temperature_neg   (sapo_temperature_pos/neg)
    k, λ, w_i, φ_i     k_*, lambda_*, log_w, phi          (vespo_k_pos/neg, vespo_lambda_pos/neg)
    w_IS               exp(log_sampler_weight)            (N, T) token sampler weight (grpo.correction)
    δ_mask, M_i        threshold, keep    (off_policy_mask_threshold)

Implementation details:

[D1] CISPO clips the importance-sampling weight, not the update: the gradient −sg[min(ρ, ε_max)]·A·∇lp_θ
     reaches every token, clipped or not. ε_max is an absolute cap on ρ (TRL's `epsilon_high`; ScaleRL
     arXiv 2510.13786 recommends 5.0). The paper writes clip(ρ, 1 − ε_low^IS, 1 + ε_high^IS) with no lower
     bound in practice: the same with ε_max = 1 + ε_high^IS. We require ε_max ≥ 1 (grpo.settings; TRL
     accepts any), since a smaller cap scales down every on-policy token. Its value at ρ ≡ 1 is −A·lp_θ,
     not ~0 as for the clipped loss. Token level only (TRL warns at sequence level; we refuse).
[D2] SAPO's gate σ(τ(ρ − 1))·4/τ has slope 1 at ρ = 1 for every τ, so on-policy ∇ℓ = −A·∇lp_θ as for the
     clipped loss; off-policy the gradient −4σ(1−σ)·ρ·A·∇lp_θ decays smoothly instead of stopping. τ_pos
     applies where A > 0 and τ_neg where A ≤ 0 (at A = 0, ℓ = 0 anyway); the paper recommends
     τ_neg > τ_pos. τ is built in the advantages' dtype (TRL's `torch.where` of two Python floats makes
     it float32: 1.05 becomes 1.0499999523, a 5e-8 relative difference, docs/trl_differences.md).
[D3] VESPO's w_i is the *product* of the token ratios (a sum of log-ratios, no length normalisation, as
     the paper), clipped as TRL does (its comment: to match the authors' code): each token log-ratio to
     [−20, 20], the sum to [log 1e-8, 20]. φ peaks at w = k/λ (φ ≤ 1.24 at the defaults) and is
     detached: ∇ℓ = −φ_i·A·∇lp_θ. A = 0 takes (k_pos, λ_pos) (A ≥ 0, where SAPO uses A > 0), as TRL.
     As TRL, λ is clamped to ≥ 1e-4 and a φ that overflows (k·log(k/λ) − k + λ > 88 in fp32) counts 0.
     With a sampler correction (ALGORITHMS.md §5, grpo.correction) the token weights enter log w_i, as TRL's
     get_gamma_weights: Σ_t m·clip(log w_IS, log 1e-8, 20) is added before the clip of the sum, instead of
     weighting ℓ. A masked token (w_IS = 0, log = −inf) counts log 1e-8 ≈ −18.4, as TRL. TRL sums over
     every column; its padding weight is that of a zero difference, 1 (log 0) unless 1 ∉ [C_min, C_max].
     Token weights only (TRL refuses the sequence modes for vespo; so does policy_loss).
[D4] The off-policy mask reads the sampler's log-probs lp_s when the caller has them, else lp_old (TRL
     likewise). Our trainer passes lp_old: at μ = 1 lp_old = sg[lp_θ], the mean is 0 and the mask keeps
     every sequence; from the second pass it drops negative-advantage sequences the updates moved away
     from. NaN in lp_s (a token the sampler could not score) counts 0 (TRL); a sequence with no
     completion token has mean 0. The mask multiplies the surrogate only, not the KL (TRL).
[D5] Huge ratios, as grpo.loss [D11]: the log-ratio is capped where the cap cannot change ℓ or its
     gradient, so exp's backward never forms 0·inf. CISPO: its weight is detached, so only the logged
     ratio_mean needs a cap, at log ε_max + 1 (min(ρ, ε_max) is constant above ε_max). SAPO: at
     log(1 + 800/τ_min), where σ(τ(ρ − 1)) = 1 exactly and the gradient 4σ(1−σ)·ρ ≈ 4ρ·e^{−800}
     underflows to 0 even in fp64 (for τ > 1e-20). VESPO clips its own log-weights; its ρ enters only
     the stats, capped at 20 nats (TRL's token clip).
"""
from __future__ import annotations

import math

import torch

VESPO_LOG_W_MIN, VESPO_LOG_W_MAX = math.log(1e-8), 20.0  # [D3] TRL's clips of log w_i
VESPO_TOKEN_LOG_RATIO_MAX = 20.0  # [D3] TRL's clip of each token's log-ratio


def cispo_ratio_cap(eps_max: float) -> float:
    """Log-ratio cap log ε_max + 1: min(ρ, ε_max) is the same above it [D5]."""
    return math.log(eps_max) + 1.0


def sapo_ratio_cap(temperature_pos: float, temperature_neg: float) -> float:
    """Log-ratio cap log(1 + 800/τ_min): σ(τ(ρ−1)) = 1 and its gradient 0 exactly above it [D5]."""
    return math.log1p(800.0 / min(temperature_pos, temperature_neg))


def cispo_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, logp: torch.Tensor, *,
                    eps_max: float) -> torch.Tensor:
    """ℓ = −sg[min(ρ, ε_max)]·A·lp_θ (MiniMax-M1 §3.1; ε_max absolute as in TRL and ScaleRL [D1]).

    Args: ratio (N, T) token ratio; advantages (N, 1); logp (N, T) lp_θ, carries grad. Returns (N, T).
    """
    weight = ratio.clamp(max=eps_max).detach()  # (N, T) sg[min(ρ, ε_max)]
    return -weight * advantages * logp  # (N, T)


def sapo_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, *, temperature_pos: float,
                   temperature_neg: float) -> torch.Tensor:
    """ℓ = −(4/τ)·σ(τ·(ρ − 1))·A, τ = τ_pos where A > 0 else τ_neg (SAPO, arXiv 2511.20347) [D2].

    Args: ratio (N, T), carries grad; advantages (N, 1). Returns (N, T).
    """
    tau = torch.where(advantages > 0, advantages.new_tensor(temperature_pos),
                      advantages.new_tensor(temperature_neg))  # (N, 1) in the advantages' dtype [D2]
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau  # (N, T) soft gate f(ρ)
    return -gate * advantages  # (N, T)


@torch.no_grad()
def vespo_weight(log_ratio: torch.Tensor, completion_mask: torch.Tensor, advantages: torch.Tensor, *,
                 k_pos: float, lambda_pos: float, k_neg: float, lambda_neg: float,
                 log_sampler_weight: torch.Tensor | None = None) -> torch.Tensor:
    """φ_i = exp(λ + k·log w_i − λ·w_i), log w_i = clip(Σ_t m·clip(lp_θ − lp_old, ±20), log 1e-8, 20) [D3].

    (k, λ) = (k_pos, λ_pos) where A_i ≥ 0, else (k_neg, λ_neg). Detached (VESPO, arXiv 2602.10693).
    Args: log_ratio (N, T) lp_θ − lp_old, finite; completion_mask (N, T) bool; advantages (N, 1);
    log_sampler_weight (N, T) log w_IS of the sampler correction, −inf allowed, or None: adds
    Σ_t m·clip(log w_IS, log 1e-8, 20) to the sum before its clip [D3].
    Returns: (N, 1) φ_i.
    """
    token = log_ratio.clamp(-VESPO_TOKEN_LOG_RATIO_MAX, VESPO_TOKEN_LOG_RATIO_MAX)  # (N, T)
    if log_sampler_weight is not None:  # log(π_θ/π_old) + log(π_old/π_sampler), TRL's get_gamma_weights [D3]
        token = token + log_sampler_weight.clamp(VESPO_LOG_W_MIN, VESPO_LOG_W_MAX)  # (N, T)
    log_w = torch.where(completion_mask, token, 0.0).sum(-1, keepdim=True)  # (N, 1) log Π_t ρ_t (· w_IS)
    log_w = log_w.clamp(VESPO_LOG_W_MIN, VESPO_LOG_W_MAX)  # (N, 1)
    positive = advantages >= 0  # (N, 1)
    k = torch.where(positive, advantages.new_tensor(k_pos), advantages.new_tensor(k_neg))  # (N, 1)
    lam = torch.where(positive, advantages.new_tensor(lambda_pos),
                      advantages.new_tensor(lambda_neg)).clamp(min=1e-4)  # (N, 1), TRL's clamp
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))  # (N, 1)
    return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # an overflowing φ counts 0, as TRL [D3]


def vespo_surrogate(phi: torch.Tensor, advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """ℓ = −sg[φ_i]·A·lp_θ [D3]. Args: phi, advantages (N, 1); logp (N, T), carries grad. Returns (N, T)."""
    return -phi * advantages * logp  # (N, T)


@torch.no_grad()
def off_policy_mask(logp: torch.Tensor, sampling_logp: torch.Tensor, advantages: torch.Tensor,
                    completion_mask: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """M_i = [A_i ≥ 0 ∨ (1/|o_i|) Σ_t m·(lp_s − sg[lp_θ]) ≤ δ_mask] (DeepSeek-V3.2 Eq. 9) [D4].

    Args: logp (N, T) lp_θ; sampling_logp (N, T) lp_s (or lp_old), NaN where unscored; advantages (N, 1);
    completion_mask (N, T) bool. Returns: (N, 1) bool, True = keep.
    """
    drift = (sampling_logp - logp).nan_to_num(nan=0.0)  # (N, T) an unscored token adds 0 [D4]
    drift = torch.where(completion_mask, drift, 0.0)  # (N, T)
    mean_drift = drift.sum(-1, keepdim=True) / completion_mask.sum(-1, keepdim=True).clamp(min=1)  # (N, 1)
    return (advantages >= 0) | (mean_drift <= threshold)  # (N, 1)
