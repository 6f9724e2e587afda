"""Cognitive filtering: from the k scored candidates of each prompt to the rewards of Eq. 2.

GEM / GenPref-SEGA (arXiv 2511.13007; seed README "Cognitive Filtering"): k Chain-of-Thought candidates
per prompt are ranked by their entropy-guided score S (Eq. 1, sega.scoring); optionally low-score
outliers are dropped and (top, bottom) pairs are built; scores are mapped to rewards:

    identity   r_i = S_i                                        (default)
    softmax    r_i = exp(S_i/τ) / Σ_{j valid} exp(S_j/τ)
    outliers   drop i when S_i < Q1 − c·(Q3 − Q1)               (Tukey's lower fence, quartiles of the group)
    pairs      (argmax_i S_i, argmin_i S_i) over the valid candidates of each prompt

Symbol → code:

    S_i        scores[b, i]    (B, k) float, (N,) scores viewed as (B, k)
    valid      valid[b, i]     (B, k) bool: the candidate takes part (non-empty, not dropped)
    r_i        rewards[b, i]   (B, k) fp32, NaN where not valid
    τ, c       tau, iqr_factor
    Q1, Q3     first and third quartiles (linear interpolation) of the valid scores of one prompt

Implementation details:

[D1] An invalid candidate gets reward NaN: the "unscorable" convention of grpo.advantages [D5], so the
     group mean, std and k_valid of Eq. 2 leave it out without a second mask.
[D2] The softmax runs over the valid candidates only, in fp32 after subtracting the group max (so a
     large S/τ cannot overflow); its rewards sum to 1 per prompt.
[D3] Outliers use Tukey's fence, not a z-score: with k = 4 one very low score inflates the std enough
     to hide itself from a z-test, while quartiles are robust to it. The fence is strictly below Q1, so
     at least the candidates at or above Q1 survive (never fewer than 2 of k ≥ 2). The seed README names
     the option without a rule; this rule is our choice.
[D4] Pairs: argmax / argmin take the first index on ties (torch semantics); a prompt with fewer than two
     valid candidates, or whose valid scores are all equal, has no pair (`has_pair` False).
[D5] Scores are detached and upcast to fp32 (fp64 stays fp64); nothing here carries gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.promote_types(x.dtype, torch.float32))  # [D5]


def identity_reward(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """r_i = S_i.  Args: scores (B, k), valid (B, k) bool. Returns (B, k) fp32, NaN where invalid [D1]."""
    return torch.where(valid, _fp32(scores), float("nan"))  # (B, k)


def softmax_reward(scores: torch.Tensor, valid: torch.Tensor, *, tau: float = 1.0) -> torch.Tensor:
    """r_i = exp(S_i/τ) / Σ_{j valid} exp(S_j/τ) [D2].

    Args: scores (B, k); valid (B, k) bool; tau > 0. Returns (B, k) fp32, NaN where invalid [D1].
    """
    assert tau > 0, f"tau must be > 0, got {tau}"
    z = torch.where(valid, _fp32(scores) / tau, -float("inf"))  # (B, k)
    z = z - z.amax(dim=1, keepdim=True).clamp(min=torch.finfo(z.dtype).min)  # (B, k)  [D2] all-invalid: no NaN
    weights = torch.where(valid, z.exp(), 0.0)  # (B, k)
    rewards = weights / weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(z.dtype).tiny)  # (B, k)
    return torch.where(valid, rewards, float("nan"))  # (B, k)  [D1]


REWARD_MAPPINGS = {"identity": identity_reward, "softmax": softmax_reward}


def map_rewards(scores: torch.Tensor, valid: torch.Tensor, *, mapping: str = "identity",
                tau: float = 1.0) -> torch.Tensor:
    """r = S (identity) or softmax(S/τ) over the valid candidates of each prompt (the table above)."""
    if mapping not in REWARD_MAPPINGS:
        raise ValueError(f"reward mapping must be one of {sorted(REWARD_MAPPINGS)}, got {mapping!r}")
    assert scores.dim() == 2 and valid.shape == scores.shape and valid.dtype == torch.bool, (
        f"scores (B, k) and valid (B, k) bool, got {tuple(scores.shape)}, {tuple(valid.shape)} {valid.dtype}")
    if mapping == "softmax":
        return softmax_reward(scores, valid, tau=tau)
    return identity_reward(scores, valid)


def drop_low_outliers(scores: torch.Tensor, valid: torch.Tensor, *, iqr_factor: float = 1.5) -> torch.Tensor:
    """keep_i = valid_i ∧ S_i ≥ Q1 − c·(Q3 − Q1), quartiles over the valid scores of the prompt [D3].

    Args: scores (B, k); valid (B, k) bool; iqr_factor c ≥ 0. Returns (B, k) bool: the new valid mask.
    """
    assert iqr_factor >= 0, f"iqr_factor must be >= 0, got {iqr_factor}"
    s = torch.where(valid, _fp32(scores), float("nan"))  # (B, k)
    q = torch.nanquantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype, device=s.device), dim=1)  # (2, B)
    fence = q[0] - iqr_factor * (q[1] - q[0])  # (B,)  NaN for a prompt with no valid candidate
    return valid & (s >= fence[:, None])  # (B, k)  NaN compares False


@dataclass
class CandidatePairs:
    """(top, bottom) candidate of each prompt [D4]."""
    top: torch.Tensor  # (B,) long, index of the highest valid score
    bottom: torch.Tensor  # (B,) long, index of the lowest valid score
    has_pair: torch.Tensor  # (B,) bool, False without two distinct valid scores

    def keep(self, k: int) -> torch.Tensor:
        """(B, k) bool mask keeping only the pair (nothing for prompts without one)."""
        one_hot = torch.nn.functional.one_hot
        both = (one_hot(self.top, k) + one_hot(self.bottom, k)).bool()  # (B, k)
        return both & self.has_pair[:, None]  # (B, k)


def top_bottom_pairs(scores: torch.Tensor, valid: torch.Tensor) -> CandidatePairs:
    """top = argmax_{i valid} S_i, bottom = argmin_{i valid} S_i per prompt [D4].

    Args: scores (B, k); valid (B, k) bool. Returns CandidatePairs of (B,) tensors.
    """
    s = _fp32(scores)
    hi = torch.where(valid, s, -float("inf"))  # (B, k)
    lo = torch.where(valid, s, float("inf"))  # (B, k)
    top, bottom = hi.argmax(dim=1), lo.argmin(dim=1)  # (B,), (B,)
    has_pair = (valid.sum(dim=1) >= 2) & (hi.amax(dim=1) > lo.amin(dim=1))  # (B,)
    return CandidatePairs(top=top, bottom=bottom, has_pair=has_pair)
