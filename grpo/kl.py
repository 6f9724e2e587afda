"""The k3 estimator of KL(π_θ ‖ π_ref), per sampled token, as the GRPO loss uses it.

Objective (DeepSeekMath, arXiv 2402.03300 §4.1, Eq. 4; estimator "k3" of J. Schulman, "Approximating KL
Divergence", 2020):

    x_t  = lp_ref(o_t) − lp_θ(o_t)
    kl_t = π_ref/π_θ − log(π_ref/π_θ) − 1 = e^x − x − 1  ≥ 0,  = 0 iff lp_θ = lp_ref

It is unbiased for KL(π_θ ‖ π_ref) when o_t ~ π_θ, and is added to the loss as β·kl (not to the reward).

Symbol → code:

    lp_θ    logp        (N, T) log-prob of the sampled token under the current policy (carries grad)
    lp_ref  ref_logp    (N, T) the same under the reference policy (no grad)
    kl_t    kl_k3(...)  (N, T)

Implementation details:

[D1] Computed as expm1(x) − x: the same value as e^x − x − 1 without the cancellation near x = 0, where the
     KL lives during training (e^x − x − 1 in fp32 returns values down to −6e-8 there). With a correctly
     rounded expm1, expm1(x) ≥ x, so the result is never negative (a property test checks it).
[D2] Math in fp32 (fp64 if given fp64), whatever the input dtype (bf16 log-probs are upcast first).
[D3] No clamp of x or of kl (as TRL; verl clamps k3 to [−10, 10]): a token the policy made e^88 times less
     likely than the reference overflows to inf, which we would rather see than hide.
[D4] Padding positions are the caller's business: `policy_loss` zeroes both inputs there first, so kl = 0.
"""
from __future__ import annotations

import torch


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """kl = e^x − x − 1 with x = ref_logp − logp (Schulman's k3); ≥ 0 and 0 at equality.

    Args:
        logp: (N, T) log-probs of the sampled tokens under the current policy, any float dtype.
        ref_logp: (N, T) the same under the reference policy.
    Returns:
        (N, T) fp32 per-token KL estimate, differentiable w.r.t. both inputs.
    """
    assert logp.shape == ref_logp.shape, f"shape mismatch {tuple(logp.shape)} vs {tuple(ref_logp.shape)}"
    dtype = torch.promote_types(torch.promote_types(logp.dtype, ref_logp.dtype), torch.float32)  # [D2]
    x = ref_logp.to(dtype) - logp.to(dtype)  # (N, T)
    return torch.expm1(x) - x  # (N, T)  [D1][D3]
