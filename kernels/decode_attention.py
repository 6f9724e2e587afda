"""One decoding step's attention on the CPU, fp32: RoPE, the KV-cache write and one query per row, in one call
(kernels/decode_attention.cpp).

    out = decode_attention(q, k, v, cos, sin, K, V, col=c, mask=attention, scale=hd ** -0.5)
    why = decode_attention_unavailable()      None when the kernel runs here, else why not, in one line

For each row n, query head h and its key/value head j = h // (H / Hkv) (grouped-query attention):

    q̃, k̃     = rope(q[n, h]), rope(k[n, j])          rope(x) = x·cos[n] + rotate_half(x)·sin[n]
    K[n, j, c], V[n, j, c] = k̃, v[n, j]              the new position is written into the cache at column c
    s_p      = scale · q̃·K[n, j, p]                  for every attended column p ≤ c (mask[n, p] ≠ 0, and p = c)
    out[n, h] = Σ_p softmax(s)_p · V[n, j, p]

Used by grpo.decode_step, whose Llama-family decoding step runs it once per layer.
[A1] Why: a decoding step attends one new position per row to the cache. Through the Hugging Face modules
     that is the rotary embedding's half a dozen small ops on q and k, the cache's index_copy_ of k and v, a
     mask, and scaled_dot_product_attention, each an op of a few microseconds on a few kilobytes; for
     smollm2-135m's 30 layers at 8 rows, 4.9 ms of a step went to the two batched matmuls of attention
     alone (a one-off torch.profiler run of the step written with torch ops). Here one call per layer.
[A2] RoPE as Hugging Face's apply_rotary_pos_emb: rotate_half(x) = (−x[hd/2:], x[:hd/2]); cos and sin [N, hd]
     come from the model's own rotary embedding for the row's position (scaled RoPE types included).
[A3] One task per (row, key/value head), on torch.get_num_threads() OpenMP threads (kernels/cpp_build.py
     [B3]): its column of the cache is written first, then its g query heads attend together, so each cached
     row of K and V is read once for all of them. With hd a multiple of 16 (64 for smollm2) all of it runs in
     AVX-512 vectors (a dot product per cached row and head, the exponentials 16 at a time); any other hd in
     plain loops with expf. 56 against 129 µs a call for the plain loops at smollm2's shape, 8 rows and 151
     cached columns, 2 threads (a one-off microbenchmark); per decoding step of 30 layers the cache is the
     step's other read besides the weights (scripts/bench_generate.py counts it in the floor).
[A4] Exactness: fp32 throughout; the softmax subtracts the largest score before exponentiating and gives a
     masked column weight exactly 0 (it is never read); the same sums as any fp32 attention in another order.
     The vector exponential: e^x = 2ⁿ·e^r, n = round(x·log₂e), r = x − n·ln2 with ln2 in two parts, e^r by its
     Taylor polynomial to r⁷/7!, 2ⁿ by scalef (underflowing to 0 as expf does); the weights it gives are
     within 8 ulp of the float64 softmax (tests/test_kernels_decode_attention.py, with everything else
     against float64 too).
"""
from __future__ import annotations

import ctypes

import torch

from .cpp_build import load_function

_state: dict = {}  # "fn": the loaded function or None, "why": why not or None (decided once per process)


def _load() -> None:
    """Decide once per process: the kernel's function in _state["fn"], or why not in _state["why"]."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn, why = load_function("decode_attention.cpp", "decode_attention",
                            [p] * 7 + [i64] * 6 + [p, i64, ctypes.c_float, p, ctypes.c_int],
                            switch="KERNELS_DECODE_ATTENTION")
    _state.update(fn=fn, why=why)


def decode_attention_unavailable() -> str | None:
    """None when decode_attention can run in this process, else the reason, one line (kernels/cpp_build.py [B2])."""
    if not _state:
        _load()
    return _state.get("why")


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     K: torch.Tensor, V: torch.Tensor, *, col: int, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """out[n, h] = Σ_{p ≤ col attended} softmax_p(scale·rope(q[n, h])·K[n, j, p])·V[n, j, p], j = h // (H / Hkv),
    after K[n, :, col] = rope(k[n]) and V[n, :, col] = v[n] (module docstring).

    Args: q [N, H·hd], k and v [N, Hkv·hd]; cos, sin [N, hd]; K, V [N, Hkv, S, hd] (written in place, col < S);
    mask [N, ≥ col + 1] int64, nonzero = attended (column col is attended whatever it holds); all fp32 but
    mask, contiguous, on the CPU. Returns out [N, H·hd] fp32.
    """
    why = decode_attention_unavailable()
    if why is not None:
        raise RuntimeError(f"kernels.decode_attention: the kernel is unavailable: {why}")
    N, Hkv, S, hd = K.shape
    H = q.shape[1] // hd if hd else 0
    shapes_ok = (q.shape == (N, H * hd) and H % max(Hkv, 1) == 0 and hd % 2 == 0 and H > 0
                 and k.shape == v.shape == (N, Hkv * hd) and cos.shape == sin.shape == (N, hd)
                 and V.shape == K.shape and mask.dim() == 2 and mask.shape[0] == N and 0 <= col < S
                 and mask.shape[1] > col)
    if not shapes_ok:
        raise ValueError(f"decode_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"cos {tuple(cos.shape)}, K {tuple(K.shape)}, V {tuple(V.shape)}, mask {tuple(mask.shape)}, "
                         f"col {col} do not fit (module docstring)")
    tensors = (q, k, v, cos, sin, K, V)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() for t in tensors) \
            or mask.dtype != torch.int64 or mask.device.type != "cpu" or mask.stride(1) != 1:
        raise ValueError("decode_attention takes contiguous fp32 CPU tensors and an int64 CPU mask, got "
                         + ", ".join(f"{t.dtype} on {t.device}" for t in (*tensors, mask)))
    out = torch.empty_like(q)
    _state["fn"](q.data_ptr(), k.data_ptr(), v.data_ptr(), cos.data_ptr(), sin.data_ptr(), K.data_ptr(),
                 V.data_ptr(), N, H, Hkv, hd, S, col, mask.data_ptr(), mask.stride(0), scale, out.data_ptr(),
                 torch.get_num_threads())
    return out
