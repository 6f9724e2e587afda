"""Triton backend of kernels.entropy (CUDA; runs on the CPU under TRITON_INTERPRET=1 for tests).

Forward, one program per row, one read of the row in BLOCK_V tiles with online rescaling
(equations and [D1]–[D9] in kernels/entropy.py). With s = (x − M)/T relative to the running max M:

    tile max  M' = max(M, max_tile x),   δ = (M − M')/T ≤ 0
    rescale   S ← e^δ · S,   W ← e^δ · (W + δ·S)         (since e^{s+δ}·(s+δ) = e^δ·(e^s·s + δ·e^s))
    add tile  S += Σ e^{s'},   W += Σ e^{s'}·s'           with s' = (x − M')/T
    finish    log S, H = log S − W/S, lp(y) = (x_y − M)/T − log S

Backward, one program per (row, BLOCK_V tile): recompute log p_j = (x_j − M)/T − log S from the saved
(M, log S) and write dx_j = (g_lp·(1[j=y] − p_j) − g_H·p_j·(log p_j + H)) / T in the logits dtype.

Implementation details:
[T1] Row offsets are int64 (program_id cast before multiplying by the strides): N·V passes 2^31
     for N = 16k, V = 151,936.
[T2] V need not be a multiple of BLOCK_V: out-of-range lanes load −inf and so contribute 0 [D3].
[T3] While M is still −inf (every entry so far −inf) the rescale is skipped: (−inf) − (−inf) = NaN.
[T4] tl.max does not promise to propagate NaN, so a NaN entry is let through the exponential
     (only x == −inf is zeroed): S, hence H, become NaN and the host check [D4] flags the row.
[T5] Accumulators are fp32 whatever the input dtype; the gradient is stored in the logits dtype.
[T6] Masked rows (keep = False) may hold NaN/inf statistics: their gradient is a `where` to 0.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

BLOCK_V = 4096  # tiles of the vocabulary; tests lower it to exercise several tiles and a ragged tail


@triton.jit
def _forward_kernel(x_ptr, ids_ptr, logp_ptr, entropy_ptr, m_ptr, log_s_ptr,
                    rows_per_block, V, stride_b, stride_t, inv_t, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # [T1] flat row b·rows_per_block + t
    base = x_ptr + (row // rows_per_block) * stride_b + (row % rows_per_block) * stride_t
    m = tl.full((), float("-inf"), tl.float32)
    s_sum = tl.zeros((), tl.float32)  # S
    w_sum = tl.zeros((), tl.float32)  # W
    for v0 in range(0, V, BLOCK):
        offs = v0 + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)  # [T2] [T5]
        m_new = tl.maximum(m, tl.max(x, 0))
        m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)
        delta = tl.where(m > float("-inf"), (m - m_ref) * inv_t, 0.0)  # [T3]
        alpha = tl.exp(delta)
        w_sum = alpha * (w_sum + delta * s_sum)
        s_sum = alpha * s_sum
        s = (x - m_ref) * inv_t  # [D1]
        e = tl.where(x == float("-inf"), 0.0, tl.exp(s))  # [D3]; a NaN x stays NaN [T4]
        s_sum += tl.sum(e, 0)
        w_sum += tl.sum(tl.where(e > 0, e * s, 0.0), 0)
        m = m_new
    log_s = tl.log(s_sum)
    y = tl.load(ids_ptr + row)
    x_y = tl.load(base + y).to(tl.float32)
    tl.store(m_ptr + row, m)
    tl.store(log_s_ptr + row, log_s)
    tl.store(entropy_ptr + row, log_s - w_sum / s_sum)  # [D2]
    tl.store(logp_ptr + row, (x_y - m) * inv_t - log_s)


@triton.jit
def _backward_kernel(x_ptr, dx_ptr, ids_ptr, keep_ptr, m_ptr, log_s_ptr, entropy_ptr, g_lp_ptr, g_h_ptr,
                     rows_per_block, V, stride_b, stride_t, inv_t, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # [T1]
    base = x_ptr + (row // rows_per_block) * stride_b + (row % rows_per_block) * stride_t
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = offs < V
    x = tl.load(base + offs, mask=in_row, other=float("-inf")).to(tl.float32)
    m, log_s, h = tl.load(m_ptr + row), tl.load(log_s_ptr + row), tl.load(entropy_ptr + row)
    g_lp, g_h = tl.load(g_lp_ptr + row), tl.load(g_h_ptr + row)
    logp = (x - m) * inv_t - log_s  # log p_j [D6]
    p = tl.where(x > float("-inf"), tl.exp(logp), 0.0)
    dz = -p * (g_lp + g_h * tl.where(p > 0, logp + h, 0.0))
    dz = tl.where(offs == tl.load(ids_ptr + row), dz + g_lp, dz)
    keep = tl.load(keep_ptr + row) != 0
    dx = tl.where(keep, dz * inv_t, 0.0)  # [T6]
    tl.store(dx_ptr + row * V + offs, dx.to(dx_ptr.dtype.element_ty), mask=in_row)  # [T5]


def _block(V: int) -> tuple[int, int]:
    block = min(BLOCK_V, triton.next_power_of_2(V))
    return block, (8 if block >= 4096 else 4)


def _on_device_of(x: torch.Tensor):
    # Triton launches on the current CUDA device, not x's: a run with --device cuda:1 would launch on cuda:0.
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def forward(x: torch.Tensor, ids: torch.Tensor, inv_t: float):
    """x (B, T, V) with last stride 1; ids (B, T) in range -> logp, entropy, m, log_s (B, T) fp32."""
    B, T, V = x.shape
    logp, entropy, m, log_s = (torch.empty(B, T, dtype=torch.float32, device=x.device) for _ in range(4))
    block, warps = _block(V)
    with _on_device_of(x):
        _forward_kernel[(B * T,)](x, ids.contiguous(), logp, entropy, m, log_s, T, V, x.stride(0), x.stride(1),
                                  inv_t, BLOCK=block, num_warps=warps)
    return logp, entropy, m, log_s


def backward(x, ids, keep, m, log_s, entropy, g_lp, g_h, inv_t: float) -> torch.Tensor:
    """Gradient w.r.t. x (B, T, V), contiguous, in x.dtype; all other inputs (B, T)."""
    B, T, V = x.shape
    grad = torch.empty((B, T, V), dtype=x.dtype, device=x.device)
    block, warps = _block(V)
    grid = (B * T, triton.cdiv(V, block))
    with _on_device_of(x):
        _backward_kernel[grid](x, grad, ids.contiguous(), keep.contiguous(), m, log_s, entropy, g_lp, g_h,
                               T, V, x.stride(0), x.stride(1), inv_t, BLOCK=block, num_warps=warps)
    return grad
