"""The GRPO policy loss: importance ratio, clipped surrogate, k3 KL, entropy bonus, aggregation.

Objective, minimised (DeepSeekMath arXiv 2402.03300 Eq. 3; DAPO arXiv 2503.14476 §3; Dr. GRPO
arXiv 2503.20783 §3.1; GSPO arXiv 2507.18071 §4; forking tokens arXiv 2506.01939; LUSPO arXiv 2602.05261):

    ρ_{i,t} = exp(lp_θ − lp_old)                                     token level (GRPO)
    s_i     = exp(Σ_t m (lp_θ − lp_old) / Σ_t m), same for every t    sequence level (GSPO)
    ℓ_{i,t} = −min(ρ̃·A_i, clip(ρ, 1−ε_low, 1+ε_high)·A_i),  ρ̃ = min(ρ, δ) (two-sided clipping)
              (cispo, sapo, vespo: their own ℓ, grpo.surrogates; × M_i with the off-policy mask)
    loss    = Agg(sel·w_IS·ℓ) + β·Agg(w·kl_k3) − c·Σ_sel H / K_sel,  w = 1, or ρ [D13]
              w_IS = sg[sampler weight] (grpo.correction; 1 without; vespo: inside φ instead [D14])

    Agg over the generation batch (N sequences, all micro-batches and ranks): grpo (sequence-mean of
      token-means), dapo (batch token-mean), dr_grpo (÷ N·L), bnpo (local token-mean), luspo (sequence
      sums ÷ N [D12]), each written out in grpo/aggregation.py.

    loss_type = surrogate + Agg (LOSS_TYPES, ALGORITHMS.md §2b): grpo, dapo, dr_grpo, bnpo, luspo are the
    clipped ℓ with the Agg of their name; cispo and vespo aggregate like dapo, sapo like grpo.

Symbol → code:

    lp_θ, lp_old, lp_ref  logp, old_logp, ref_logp   (N, T) log-probs of the sampled tokens
    m                     completion_mask            (N, T) bool, up to and including the first EOS
    sel                   token_mask                 (N, T) bool forking tokens (None = every token)
    A_i                   advantages                 (N,) from grpo.advantages, (B, G) flattened
    ρ or s_i              ratio                      (N, T)
    ε_low, ε_high, δ      eps_low, eps_high, delta     (cispo: eps_high is its cap ε_max)
    M_i                   keep                       (N, 1) bool off-policy mask (grpo.surrogates [D4])
    w_IS                  sampler_weight             (N, T) or (N, 1) sampler–trainer IS weight, no grad
    β, c, H               beta, entropy_coef, entropy   H: per-token entropy (carries grad)
    N, Σ m, K_sel, L      num_sequences, num_tokens, num_selected_tokens, max_completion_length

Implementation details:

[D1] Every aggregator returns this micro-batch's *share* of the whole-batch loss, so the gradient of an
     optimiser step does not depend on the split (grpo.aggregation [A1]).
[D2] bnpo is the local token-mean and is NOT split-invariant (grpo.aggregation [A2]).
[D3] Padding (¬m) may hold anything (NaN, ±inf): every per-token input is zeroed there before any exp, so
     padding changes neither the loss nor the gradient (exactly 0 on padding).
[D4] GSPO keeps the gradient through the mean, ∇s_i = s_i·(1/|o_i|)·Σ_t ∇lp_θ (GSPO §4.2; TRL likewise).
     At μ = 1 (ρ ≡ 1) token and sequence level then give the same gradient for every loss_type.
[D5] δ caps the unclipped branch only (TRL `delta`, from INTELLECT-2): ρ̃ = min(ρ, δ). We require
     δ ≥ 1 + ε_high; a smaller δ would cut inside the trust region.
[D6] Clip fractions as TRL logs them: low = (ρ < 1−ε_low) ∧ (A < 0), high = (ρ > 1+ε_high) ∧ (A > 0),
     region = low ∨ high. All stats are means over the local completion tokens (for GSPO a long sequence
     weighs more than in TRL's per-sequence mean); combine micro-batches weighted by `num_tokens`.
[D7] Forking tokens: sel restricts the surrogate only; the GSPO mean still runs over all of m.
     token_normalizer "all_tokens" (paper, TRL) keeps the loss_type's denominators (Σ m, |o_i|);
     "selected_tokens" (official code) counts selected tokens instead (K_sel, |sel_i|, local Σ sel).
     dr_grpo's denominator is a constant, so it rejects "selected_tokens".
[D8] The KL applies to every completion token with the all-token denominators (TRL adds β·kl after the
     entropy mask). The entropy bonus applies to the selected tokens (TRL: "so it acts on the same tokens")
     as a token-mean −c·Σ_sel H / K_sel whatever the loss_type (TRL: a mean entropy, not scaled by the
     policy normaliser); K_sel counts the whole batch, so the bonus is split-invariant too.
[D9] mask_truncated_completions (DAPO overlong filtering) is the caller's: pass `completion_mask &
     ~truncated[:, None]` and count num_tokens from it; such sequences then contribute nothing.
[D10] Math in fp32 (fp64 if given fp64); masks are bool. Stats are detached 0-dim tensors (no host sync).
[D11] The log-ratio is capped where the cap cannot change the loss or its gradient (`ratio_cap`): a
     clipped token with lp_θ − lp_old above ~88 overflowed exp in fp32 to ρ = inf, and although ℓ
     took the finite clipped branch, its backward formed 0·inf = NaN (issue #13). A ≥ 0: the clip
     holds ℓ at −(1+ε_high)·A for any ρ > 1+ε_high; with δ, ℓ = −δ·A for ρ > δ. The cap sits one nat
     above those thresholds. A < 0 without δ is left unbounded: there ρ·|A| is the loss. The logged
     ratio_mean counts a capped token at its cap. The other surrogates' caps: grpo.surrogates [D5].
[D12] luspo is GSPO's clipped surrogate summed over each sequence (the paper scales each sequence's loss by
     its length), over N as TRL's `.mean()`. Levels as loss_type requires, refused otherwise (TRL only
     warns): luspo sequence, cispo and vespo token (their weights are per token; vespo forms its own
     sequence weight). luspo's normaliser counts no tokens, so it rejects "selected_tokens" as dr_grpo [D7].
[D13] use_bias_correction_kl (DeepSeek-V3.2 arXiv 2512.02556; TRL's default True): the KL term is ρ·kl_k3,
     with the uncapped ratio of the importance_sampling_level (GSPO: s_i) and the gradient through both,
     unbiased for KL(π_θ ‖ π_ref) when tokens come from π_old (at token level). Ours is off by default
     (DeepSeekMath's k3, ALGORITHMS.md §2): even at μ = 1 it adds β·kl·∇lp_θ (docs/trl_differences.md).
[D14] Sampler correction (ALGORITHMS.md §5, TRL 1.16's placement): ℓ ← sg[w_IS]·ℓ after the off-policy
     mask, before aggregation; normalisers unchanged; the KL and the entropy bonus are not weighted. vespo
     instead adds Σ_t m·clip(log w_IS, log 1e-8, 20) into its log w_i (grpo.surrogates [D3]; a masked
     w_IS = 0 counts log 1e-8) and takes token weights only. w_IS is zeroed on padding and must be finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from grpo import surrogates
from grpo.aggregation import AGGREGATE, Count, aggregate_dapo
from grpo.kl import kl_k3

def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # [D10]


def token_ratio(logp: torch.Tensor, old_logp: torch.Tensor, *, max_log_ratio: torch.Tensor | None = None
                ) -> torch.Tensor:
    """ρ_{i,t} = exp(min(lp_θ − lp_old, cap_i)). Inputs (N, T), finite (padding zeroed [D3]); returns (N, T).

    max_log_ratio: (N, 1) cap_i, +inf where none [D11]; None = no cap.
    """
    log_ratio = logp - old_logp  # (N, T)
    if max_log_ratio is not None:
        log_ratio = torch.minimum(log_ratio, max_log_ratio)  # [D11]
    return torch.exp(log_ratio)  # (N, T)


def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, completion_mask: torch.Tensor, *,
                   max_log_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """s_i = exp(min(Σ_t m (lp_θ − lp_old) / Σ_t m, cap_i)) (GSPO §4.1), the same value for every token of i.

    Gradient flows through lp_θ in the mean [D4]; a sequence with no completion token gets s_i = 1.
    Args: logp, old_logp (N, T) float; completion_mask (N, T) bool; max_log_ratio (N, 1) cap_i or None
    [D11]. Returns (N, T).
    """
    log_ratio = torch.where(completion_mask, logp - old_logp, 0.0)  # (N, T)  [D3]
    mean_log_ratio = log_ratio.sum(-1, keepdim=True) / completion_mask.sum(-1, keepdim=True).clamp(min=1)  # (N,1)
    if max_log_ratio is not None:
        mean_log_ratio = torch.minimum(mean_log_ratio, max_log_ratio)  # [D11]
    return torch.exp(mean_log_ratio).expand_as(logp)  # (N, T)


def ratio_cap(advantages: torch.Tensor, *, eps_high: float, delta: float | None) -> torch.Tensor:
    """cap_i = log(max(1 + ε_high, δ)) + 1 where the cap cannot change ℓ or its gradient, else +inf [D11].

    For A_i ≥ 0 every ρ > 1 + ε_high gives ℓ = −(1+ε_high)·A_i and no gradient; with δ every ρ > δ gives
    ℓ = −δ·A_i (A_i < 0) and no gradient. Only A_i < 0 without δ keeps the unbounded ρ·|A_i|.
    Args: advantages (N, 1). Returns (N, 1) fp32.
    """
    cap = math.log(max(1 + eps_high, delta or 0.0)) + 1.0
    bounded = (advantages >= 0) | (delta is not None)  # (N, 1)
    return torch.where(bounded, cap, float("inf")).to(advantages.dtype)  # (N, 1)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, *, eps_low: float, eps_high: float,
                      delta: float | None = None) -> torch.Tensor:
    """ℓ = −min(ρ̃·A, clip(ρ, 1−ε_low, 1+ε_high)·A), ρ̃ = min(ρ, δ) if δ is set else ρ [D5].

    Args: ratio (N, T); advantages broadcastable to it, e.g. (N, 1). Returns (N, T) per-token loss.
    """
    assert delta is None or delta >= 1 + eps_high, f"delta must be >= 1 + eps_high [D5], got {delta}"
    capped = ratio if delta is None else ratio.clamp(max=delta)  # ρ̃  [D5]
    pg_loss1 = -advantages * capped  # (N, T)
    pg_loss2 = -advantages * ratio.clamp(1 - eps_low, 1 + eps_high)  # (N, T)
    return torch.maximum(pg_loss1, pg_loss2)  # −min(a, b) = max(−a, −b)


def clipped_tokens(ratio: torch.Tensor, advantages: torch.Tensor, *, eps_low: float,
                   eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """low = (ρ < 1−ε_low) ∧ (A < 0), high = (ρ > 1+ε_high) ∧ (A > 0): where the clip zeroes the gradient [D6].

    Args: ratio (N, T); advantages broadcastable, e.g. (N, 1). Returns (low, high), each (N, T) bool.
    """
    low = (ratio < 1 - eps_low) & (advantages < 0)  # (N, T)
    high = (ratio > 1 + eps_high) & (advantages > 0)  # (N, T)
    return low, high


# loss_type -> (per-token surrogate, aggregation), ALGORITHMS.md §2, §2b
LOSS_TYPES = {"grpo": ("clipped", "grpo"), "dapo": ("clipped", "dapo"), "dr_grpo": ("clipped", "dr_grpo"),
              "bnpo": ("clipped", "bnpo"), "luspo": ("clipped", "luspo"), "cispo": ("cispo", "dapo"),
              "sapo": ("sapo", "grpo"), "vespo": ("vespo", "dapo")}
LEVEL_OF = {"luspo": "sequence", "cispo": "token", "vespo": "token"}  # the only level these accept [D12]
CONSTANT_NORMALISER = ("dr_grpo", "luspo")  # no token count: "selected_tokens" is undefined [D7]


@dataclass
class PolicyLossStats:
    """Detached 0-dim tensors [D10]; means over the local completion tokens [D6]; None where not applicable."""
    pg_loss: torch.Tensor  # this micro-batch's share of the surrogate term (no KL, no entropy)
    kl: torch.Tensor | None  # mean KL term to the reference (ρ·k3 with use_bias_correction_kl); None without ref_logp
    entropy: torch.Tensor | None  # mean per-token entropy; None without entropy
    ratio_mean: torch.Tensor  # mean ρ (GSPO: s_i, counted once per token)
    clip_low: torch.Tensor | None  # fraction of tokens with ρ < 1−ε_low and A < 0 (clipped surrogate only)
    clip_high: torch.Tensor | None  # fraction of tokens with ρ > 1+ε_high and A > 0 (clipped surrogate only)
    clip_region: torch.Tensor | None  # clip_low + clip_high (clipped surrogate only)
    cispo_clip_ratio: torch.Tensor | None  # cispo: fraction of tokens with ρ > ε_max and A > 0
    vespo_phi_seq_mean: torch.Tensor | None  # vespo: mean φ_i over the sequences with a completion token
    off_policy_masked: torch.Tensor | None  # fraction of those sequences the off-policy mask drops
    num_tokens: torch.Tensor  # local Σ m: the weight for combining micro-batch stats
    num_selected_tokens: torch.Tensor  # local Σ m·sel
    num_sequences: torch.Tensor  # local sequences with a completion token: the weight of the per-sequence stats


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                completion_mask: torch.Tensor, *,
                loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "luspo", "cispo", "sapo", "vespo"],
                eps_low: float, eps_high: float, delta: float | None = None,
                importance_sampling_level: Literal["token", "sequence"] = "token",
                sapo_temperature: tuple[float, float] = (1.0, 1.05),
                vespo_k: tuple[float, float] = (2.0, 3.0), vespo_lambda: tuple[float, float] = (3.0, 2.0),
                off_policy_mask_threshold: float | None = None, sampling_logp: torch.Tensor | None = None,
                sampler_weight: torch.Tensor | None = None,
                ref_logp: torch.Tensor | None = None, beta: float = 0.0, use_bias_correction_kl: bool = False,
                entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
                token_mask: torch.Tensor | None = None,
                token_normalizer: Literal["all_tokens", "selected_tokens"] = "all_tokens",
                num_sequences: Count, num_tokens: Count, num_selected_tokens: Count | None = None,
                max_completion_length: int) -> tuple[torch.Tensor, PolicyLossStats]:
    """loss = Agg(M·sel·w_IS·ℓ) + β·Agg(w·kl_k3) − c·Σ_sel H / K_sel, this micro-batch's share [D1].

    Args:
        logp: (N, T) current-policy log-probs of the sampled tokens (carries grad); old_logp, ref_logp:
            (N, T) behaviour / reference log-probs (no grad). Any float dtype, anything on padding [D3].
        advantages: (N,) one per sequence. completion_mask: (N, T) bool, truncation applied [D9].
        loss_type: the surrogate and its aggregation (LOSS_TYPES); eps_high is cispo's cap ε_max.
        sapo_temperature: (τ_pos, τ_neg); vespo_k, vespo_lambda: (for A ≥ 0, for A < 0) (grpo.surrogates).
        off_policy_mask_threshold: δ_mask, None = no mask; sampling_logp: (N, T) the sampler's log-probs
            for it, None = old_logp (grpo.surrogates [D4]).
        sampler_weight: w_IS, (N, T) token or (N, 1) sequence weight from grpo.correction.sampler_weights,
            finite, detached here; None = 1. vespo takes (N, T) only [D14].
        use_bias_correction_kl: weight the KL by ρ [D13].
        entropy: (N, T) per-token entropy H (carries grad); required when entropy_coef != 0.
        token_mask: (N, T) bool forking-token selection [D7], or None for every token.
        num_sequences, num_tokens, num_selected_tokens: N, Σ m, Σ m·sel over the whole generation batch
            [D1]; num_selected_tokens is required with a token_mask and either "selected_tokens" or c != 0.
        max_completion_length: L (dr_grpo).
    Returns:
        (loss () fp32 with grad, PolicyLossStats).
    """
    n, t = logp.shape
    assert completion_mask.dtype == torch.bool and completion_mask.shape == (n, t), "mask: (N, T) bool"
    assert old_logp.shape == (n, t) and advantages.shape == (n,), "need old_logp (N, T), advantages (N,)"
    assert token_mask is None or (token_mask.dtype == torch.bool and token_mask.shape == (n, t)), "token_mask"
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', "
                         f"got {importance_sampling_level!r}")
    if LEVEL_OF.get(loss_type, importance_sampling_level) != importance_sampling_level:
        raise ValueError(f"loss_type {loss_type!r} needs importance_sampling_level={LEVEL_OF[loss_type]!r} [D12]")
    if token_normalizer not in ("all_tokens", "selected_tokens"):
        raise ValueError(f"token_normalizer must be 'all_tokens' or 'selected_tokens', "
                         f"got {token_normalizer!r}")
    if token_normalizer == "selected_tokens" and loss_type in CONSTANT_NORMALISER:
        raise ValueError(f"{loss_type} has a constant normaliser: token_normalizer='selected_tokens' "
                         "is undefined [D7]")
    surrogate, aggregation = LOSS_TYPES[loss_type]
    if delta is not None and surrogate != "clipped":
        raise ValueError(f"delta caps the clipped surrogate; loss_type {loss_type!r} has none")
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp")
    if entropy_coef != 0.0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs entropy")
    if sampler_weight is not None and sampler_weight.shape not in ((n, t), (n, 1)):
        raise ValueError(f"sampler_weight must be (N, T) or (N, 1), got {tuple(sampler_weight.shape)}")
    if sampler_weight is not None and surrogate == "vespo" and sampler_weight.shape != (n, t):
        raise ValueError("vespo needs a token-level sampler_weight (N, T), not a sequence one [D14]")
    if token_mask is None:
        num_selected_tokens = num_tokens
    elif num_selected_tokens is None and (token_normalizer == "selected_tokens" or entropy_coef != 0.0):
        raise ValueError("token_mask with 'selected_tokens' or an entropy bonus needs num_selected_tokens")
    mask = completion_mask
    selected = mask if token_mask is None else mask & token_mask  # (N, T)
    aggregate = AGGREGATE[aggregation]
    norms = dict(num_sequences=num_sequences, num_tokens=num_tokens,
                 max_completion_length=max_completion_length)
    selected_norms = {**norms, "num_tokens": num_selected_tokens}

    def clean(x: torch.Tensor) -> torch.Tensor:
        return _fp32(x).masked_fill(~mask, 0.0)  # (N, T)  [D3][D10]

    logp, old_logp = clean(logp), clean(old_logp)
    adv = _fp32(advantages)[:, None]  # (N, 1)
    w_is = None if sampler_weight is None else torch.where(mask, _fp32(sampler_weight.detach()), 0.0)  # (N, T)

    def importance_ratio(cap: torch.Tensor | float | None) -> torch.Tensor:  # cap: (N, 1), a float or None
        cap = logp.new_tensor(cap) if isinstance(cap, float) else cap  # [D11]
        if importance_sampling_level == "token":
            return token_ratio(logp, old_logp, max_log_ratio=cap)  # (N, T)
        return sequence_ratio(logp, old_logp, mask, max_log_ratio=cap)  # (N, T)  [D4]

    # 1.-2. importance ratio, capped where the cap changes nothing [D11], and the per-token surrogate
    phi = None
    if surrogate == "clipped":
        ratio = importance_ratio(ratio_cap(adv, eps_high=eps_high, delta=delta))  # (N, T)
        per_token = clipped_surrogate(ratio, adv, eps_low=eps_low, eps_high=eps_high, delta=delta)  # (N, T)
    elif surrogate == "cispo":
        ratio = importance_ratio(surrogates.cispo_ratio_cap(eps_high))  # (N, T)
        per_token = surrogates.cispo_surrogate(ratio, adv, logp, eps_max=eps_high)  # (N, T)
    elif surrogate == "sapo":
        ratio = importance_ratio(surrogates.sapo_ratio_cap(*sapo_temperature))  # (N, T)
        per_token = surrogates.sapo_surrogate(ratio, adv, temperature_pos=sapo_temperature[0],
                                              temperature_neg=sapo_temperature[1])  # (N, T)
    else:  # vespo: ρ enters the stats only
        ratio = importance_ratio(surrogates.VESPO_TOKEN_LOG_RATIO_MAX)  # (N, T)
        phi = surrogates.vespo_weight(logp - old_logp, mask, adv, k_pos=vespo_k[0], lambda_pos=vespo_lambda[0],
                                      k_neg=vespo_k[1], lambda_neg=vespo_lambda[1],
                                      log_sampler_weight=None if w_is is None else torch.log(w_is))  # (N, 1) [D14]
        per_token = surrogates.vespo_surrogate(phi, adv, logp)  # (N, T)
    keep = None
    if off_policy_mask_threshold is not None:  # DeepSeek-V3.2's off-policy sequence mask
        lp_s = old_logp if sampling_logp is None else clean(sampling_logp)  # (N, T)
        keep = surrogates.off_policy_mask(logp, lp_s, adv, mask, threshold=off_policy_mask_threshold)  # (N, 1)
        per_token = torch.where(keep, per_token, 0.0)  # (N, T)
    if w_is is not None and surrogate != "vespo":  # the sampler correction, on the surrogate only
        per_token = w_is * per_token  # (N, T) sg[w_IS]·ℓ  [D14]
    # 3. aggregation, on the selected tokens
    if token_normalizer == "all_tokens":
        pg_loss = aggregate(per_token.masked_fill(~selected, 0.0), mask, **norms)  # [D7]
    else:
        pg_loss = aggregate(per_token, selected, **selected_norms)  # [D7]
    loss = pg_loss
    # 4. KL to the reference, on every completion token
    kl = None if ref_logp is None else kl_k3(logp, clean(ref_logp))  # (N, T)
    if kl is not None and use_bias_correction_kl:
        kl = importance_ratio(None) * kl  # (N, T) uncapped ρ, gradient through both [D13]
    if beta != 0.0:
        loss = loss + beta * aggregate(kl, mask, **norms)  # [D8]
    # 5. entropy bonus, on the selected tokens, as a token-mean over the whole batch
    entropy = None if entropy is None else clean(entropy)  # (N, T)
    if entropy_coef != 0.0:
        loss = loss - entropy_coef * aggregate_dapo(entropy, selected, **selected_norms)  # [D8]
    # 6. stats over the local completion tokens [D6], per-sequence ones over the sequences with a token
    with torch.no_grad():
        count, has_tokens = mask.sum(), mask.any(-1, keepdim=True)  # (), (N, 1)

        def mean(x: torch.Tensor | None, where: torch.Tensor = mask) -> torch.Tensor | None:
            return None if x is None else x.masked_fill(~where, 0.0).sum() / where.sum().clamp(min=1)  # ()

        low, high = clipped_tokens(ratio, adv, eps_low=eps_low, eps_high=eps_high)  # (N, T) bool
        clipped, dropped = surrogate == "clipped", None if keep is None else (~keep).float()  # dropped (N, 1)
        stats = PolicyLossStats(
            pg_loss=pg_loss.detach(), kl=mean(kl), entropy=mean(entropy), ratio_mean=mean(ratio),
            clip_low=mean(low.float()) if clipped else None, clip_high=mean(high.float()) if clipped else None,
            clip_region=mean((low | high).float()) if clipped else None,
            cispo_clip_ratio=mean(((ratio > eps_high) & (adv > 0)).float()) if surrogate == "cispo" else None,
            vespo_phi_seq_mean=mean(phi, has_tokens), off_policy_masked=mean(dropped, has_tokens),
            num_tokens=count, num_selected_tokens=selected.sum(), num_sequences=has_tokens.sum())
    return loss, stats
