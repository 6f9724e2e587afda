"""Log-prob and entropy straight from hidden states: the LM head applied tile by tile.

Same quantities as kernels.entropy (ALGORITHMS.md §1), with logits x = h·Wᵀ + b never stored:

    for each token chunk (n ≤ chunk_tokens) and vocabulary chunk (v ≤ chunk_vocab):
        x_tile = h_chunk · W_chunkᵀ + b_chunk                                  (n, v) fp32
        merge the tile into running (M, S, W):  M' = max(M, max x_tile),  δ = (M − M')/T,
            S ← e^δ·S + Σ e^{s'},   W ← e^δ·(W + δ·S) + Σ e^{s'}·s',   s' = (x_tile − M')/T
    log S, H = log S − W/S, lp(y) = (x_y − M)/T − log S

Backward recomputes each tile and turns it into dz in place (kernels/entropy.py, same formula), then

    ∂h = Σ_tiles dz · W_chunk,   ∂W_chunk = Σ_token-chunks dzᵀ · h_chunk,   ∂b_chunk = Σ_tokens dz

Symbol → code: h hidden (N, D) · W weight (V, D) · b bias (V,) · M m · log S log_s · H entropy ·
chunk sizes chunk_tokens, chunk_vocab. N counts tokens here (the flattened leading dims of hidden).

Implementation details:
[L1] Tiles are computed in fp32 from the (possibly bf16) h and W: results are those of the exact
     logits to fp32 accuracy. They differ from `lm_head(h).float()` of a bf16 model by the bf16
     rounding of its logits (≤ 2⁻⁸ relative), a difference shared by every call of this function, so
     ratios between policies scored with it are consistent.
[L2] Peak extra memory is two (chunk_tokens, chunk_vocab) fp32 tiles plus one fp32 weight chunk,
     whatever N and V; the backward adds an fp32 (N, D) accumulator for ∂h and a (chunk_vocab, D)
     one for ∂W, so the fp32 ∂W never exists at full (V, D) size: vocabulary is the outer loop.
[L3] Gradients are accumulated in fp32 and cast once to the parameter dtype. A weight (or bias) with
     requires_grad=False (frozen under LoRA) gets no gradient and costs no GEMM.
[L4] Masked tokens and ids follow kernels.entropy [D4] [D5]: outputs 0, no gradient, any id allowed.
     A GEMM gives finite logits for finite inputs, so a non-finite M or H means NaN/inf in h, W or b:
     ValueError for an unmasked token.
[L5] Autocast is off, for the device type of h, in the public function and around the whole backward
     (issue #12), as in kernels.entropy [D10]: under torch.autocast(dtype=bf16) the tile GEMM
     h32 @ W_chunkᵀ returns bf16 (measured at V = 4099: 9e-2 error in lp, 1.7e-1 relative in ∂h),
     and a backward run inside the autocast region failed outright (bf16 dz). h and W are not cast:
     each tile is upcast as in [L1]. Not torch.amp.custom_fwd(cast_inputs=torch.float32): it would
     copy the whole (V, D) weight to fp32, against [L2], and it fixes one device type when decorated.
[L6] TF32 is switched off around our GEMMs on CUDA (the trainers turn it on for the rest of the model,
     grpo.models [D8]): it would round fp32 h and W to 10-bit mantissas. bf16 inputs lose nothing
     either way. Float64 inputs (h or W) are computed, and returned, in float64, so a float64 model
     checks rank-count and micro-batch invariance to ~1e-15 (tests/test_ddp.py).
"""
from __future__ import annotations

import contextlib

import torch

from kernels.entropy import _autocast_off, _raise_if_invalid


def _tiles(n_total: int, chunk: int):
    return [(a, min(a + chunk, n_total)) for a in range(0, n_total, chunk)]


def _acc_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when h or W is fp64 (exact checks) [L6]."""
    return torch.float64 if torch.float64 in (h.dtype, weight.dtype) else torch.float32


@contextlib.contextmanager
def _exact_matmuls(h: torch.Tensor):
    """Autocast off for h's device type [L5] and, on CUDA, TF32 off for our GEMMs [L6]; both restored."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if h.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
        with _autocast_off(h):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _logit_tile(h32, weight, bias, v0, v1):
    x = h32 @ weight[v0:v1].to(h32.dtype).t()  # (n, v) fp32 [L1] (fp64 [L6])
    return x if bias is None else x.add_(bias[v0:v1].to(h32.dtype))


def _forward(h, weight, bias, ids, inv_t, chunk_tokens, chunk_vocab):
    """h (N, D), ids (N,) in range -> logp, entropy, m, log_s (N,) fp32 (fp64 [L6])."""
    N, V, acc = h.shape[0], weight.shape[0], _acc_dtype(h, weight)
    m = torch.full((N,), float("-inf"), device=h.device, dtype=acc)
    s_sum, w_sum, x_y = (torch.zeros(N, device=h.device, dtype=acc) for _ in range(3))
    for t0, t1 in _tiles(N, chunk_tokens):
        h32, y = h[t0:t1].to(acc), ids[t0:t1]  # (n, D), (n,)
        mt, st, wt, xyt = m[t0:t1], s_sum[t0:t1], w_sum[t0:t1], x_y[t0:t1]  # views, updated in place
        for v0, v1 in _tiles(V, chunk_vocab):
            x = _logit_tile(h32, weight, bias, v0, v1)  # (n, v)
            hit = (y >= v0) & (y < v1)
            xyt.copy_(torch.where(hit, x.gather(1, (y - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1), xyt))
            m_new = torch.maximum(mt, x.amax(1))  # (n,)
            delta = torch.where(mt > float("-inf"), (mt - m_new) * inv_t, 0.0)  # first tile: no rescale
            s = x.sub_(m_new[:, None]).mul_(inv_t)  # (n, v) s' ≤ 0, in place
            e = torch.exp(s)  # (n, v), the second tile buffer [L2]
            s_tile = e.sum(1)  # (n,)
            w_tile = s.mul_(e).sum(1)  # (n,) Σ e^{s'}·s', in place in the first buffer
            alpha = torch.exp(delta)
            wt.copy_(alpha * (wt + delta * st) + w_tile)
            st.copy_(alpha * st + s_tile)
            mt.copy_(m_new)
    log_s = torch.log(s_sum)
    return (x_y - m) * inv_t - log_s, log_s - w_sum / s_sum, m, log_s


class _LMHeadLogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, ids, keep, inv_t, chunk_tokens, chunk_vocab):
        logp, entropy, m, log_s, ids = _checked_forward(h, weight, bias, ids, keep, inv_t, chunk_tokens,
                                                         chunk_vocab)
        ctx.save_for_backward(h, weight, bias, ids, keep, m, log_s, entropy)
        ctx.cfg = (inv_t, chunk_tokens, chunk_vocab)
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        h, weight, bias, ids, keep, m, log_s, entropy = ctx.saved_tensors
        inv_t, chunk_tokens, chunk_vocab = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with _exact_matmuls(h):  # the whole backward in fp32 [L5] [L6]
            acc = m.dtype  # fp32, or fp64 [L6]
            zero = torch.zeros((), device=h.device, dtype=acc)
            g_lp = zero.expand_as(m) if grad_logp is None else torch.where(keep, grad_logp.to(acc), zero)
            g_h = zero.expand_as(m) if grad_entropy is None else torch.where(keep, grad_entropy.to(acc), zero)
            N, V = h.shape[0], weight.shape[0]
            grad_h = torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None  # [L3]
            grad_w = torch.empty_like(weight) if need_w else None
            grad_b = torch.empty_like(bias) if need_b else None
            h32_all = h.to(acc)  # (N, D), no copy for fp32 h
            for v0, v1 in _tiles(V, chunk_vocab):  # vocabulary outer [L2]
                w32 = weight[v0:v1].to(acc)  # (v, D)
                gw_acc = torch.zeros_like(w32) if need_w else None  # (v, D) fp32
                gb_acc = torch.zeros(v1 - v0, device=h.device, dtype=acc) if need_b else None
                for t0, t1 in _tiles(N, chunk_tokens):
                    h32, y = h32_all[t0:t1], ids[t0:t1]
                    x = _logit_tile(h32, weight, bias, v0, v1)  # (n, v) recomputed
                    logp = x.sub_(m[t0:t1, None]).mul_(inv_t).sub_(log_s[t0:t1, None])  # (n, v) log p_j
                    p = torch.exp(logp)
                    dz = logp.add_(entropy[t0:t1, None]).mul_(g_h[t0:t1, None])  # in place
                    dz = dz.add_(g_lp[t0:t1, None]).mul_(p).neg_()  # (n, v) −p·(g_lp + g_H·(log p + H))
                    hit = (y >= v0) & (y < v1)  # (n,) sampled id falls in this tile: + g_lp·1[j=y]
                    col = (y - v0).clamp(0, v1 - v0 - 1)[:, None]  # (n, 1)
                    dz.scatter_add_(1, col, torch.where(hit, g_lp[t0:t1], 0.0)[:, None])
                    dz.masked_fill_(~keep[t0:t1, None], 0.0).mul_(inv_t)  # (n, v) dx, fp32 [L4]
                    if need_h:
                        grad_h[t0:t1].addmm_(dz, w32)
                    if need_w:
                        gw_acc.addmm_(dz.t(), h32)
                    if need_b:
                        gb_acc += dz.sum(0)
                if need_w:
                    grad_w[v0:v1] = gw_acc.to(weight.dtype)
                if need_b:
                    grad_b[v0:v1] = gb_acc.to(bias.dtype)
        grad_h = grad_h.to(h.dtype) if need_h else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _checked_forward(h, weight, bias, ids, keep, inv_t, chunk_tokens, chunk_vocab):
    V = weight.shape[0]
    bad_ids = (ids < 0) | (ids >= V)
    safe_ids = ids.masked_fill(bad_ids | ~keep, 0).long()  # [L4]
    logp, entropy, m, log_s = _forward(h, weight, bias, safe_ids, inv_t, chunk_tokens, chunk_vocab)
    _raise_if_invalid(~(torch.isfinite(m) & torch.isfinite(entropy)) & keep, bad_ids & keep, V)
    zero = torch.zeros((), device=h.device)
    return torch.where(keep, logp, zero), torch.where(keep, entropy, zero), m, log_s, safe_ids


def lm_head_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, *,
                                 temperature: float = 1.0, bias: torch.Tensor | None = None,
                                 mask: torch.Tensor | None = None, chunk_tokens: int = 1024,
                                 chunk_vocab: int = 4096):
    """lp(y) and H of softmax((h·Wᵀ + b)/T) per token, without an (N, V) logits tensor.

    Args:
        hidden: [..., D] fp32 / bf16 / fp16 hidden states (copied only if not viewable as (N, D)).
        weight: (V, D) LM-head weight; bias: optional (V,). Either may have requires_grad=False.
        ids: [...] int64 sampled tokens; mask: optional [...] bool, True where scored [L4].
        temperature: T > 0.  chunk_tokens, chunk_vocab: tile sizes (memory ≈ 2·chunk_tokens·chunk_vocab·4 B).
    Returns:
        (logp, entropy): fp32 [...] tensors (fp64 for fp64 inputs [L6]), differentiable w.r.t. hidden,
        weight and bias.
    """
    D = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != D:
        raise ValueError(f"weight must be (V, D={D}), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    if ids.shape != hidden.shape[:-1] or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids must be int64 with shape {tuple(hidden.shape[:-1])}, got {ids.dtype} {tuple(ids.shape)}")
    if mask is not None and (mask.shape != ids.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be bool with shape {tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a positive finite float, got {temperature!r}")
    if not (chunk_tokens >= 1 and chunk_vocab >= 1):
        raise ValueError(f"chunk sizes must be >= 1, got {chunk_tokens}, {chunk_vocab}")
    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, D)  # (N, D)
    ids1 = ids.reshape(-1)  # (N,)
    keep = torch.ones_like(ids1, dtype=torch.bool) if mask is None else mask.reshape(-1)
    args = (h, weight, bias, ids1, keep, 1.0 / float(temperature), int(chunk_tokens), int(chunk_vocab))
    needs_grad = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    with _exact_matmuls(h):  # [L5] [L6]
        if torch.is_grad_enabled() and needs_grad:
            logp, entropy = _LMHeadLogpEntropy.apply(*args)
        else:
            logp, entropy = _checked_forward(*args)[:2]
    return logp.reshape(lead), entropy.reshape(lead)
