"""kernels: fused per-token log-prob / entropy and entropy-based token selection (pure PyTorch + Triton).

    token_logprobs_and_entropy(logits, ids, *, temperature, mask, backend)   kernels/entropy.py
    lm_head_logprobs_and_entropy(hidden, weight, ids, *, temperature, bias, mask, chunk_tokens,
                                 chunk_vocab)                                kernels/lm_head_entropy.py
    top_m_entropy_mean(entropy, mask, *, top_m)                              kernels/fork_selection.py
    top_k_entropy_mask(entropy, mask, *, rho, process_group)                 kernels/fork_selection.py

Backends of the first op: kernels/entropy_cpu.py (compiled one pass, chunked eager fallback) and
kernels/entropy_triton.py (CUDA), checked against the float64 definition in tests/test_kernels_*.py.
Nothing here imports grpo or sega (STYLE.md layout), and Triton is imported only when used.
"""
from kernels.entropy import token_logprobs_and_entropy
from kernels.fork_selection import top_k_entropy_mask, top_m_entropy_mean
from kernels.lm_head_entropy import lm_head_logprobs_and_entropy

__all__ = ["token_logprobs_and_entropy", "lm_head_logprobs_and_entropy", "top_m_entropy_mean",
           "top_k_entropy_mask"]
