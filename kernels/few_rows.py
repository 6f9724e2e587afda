"""x·Wᵀ for a few rows of x on the CPU, fp32: a hand-written AVX-512 kernel (kernels/few_rows_gemm.cpp).

    y = few_rows_linear(x, weight)     x [M, K], weight [N, K], fp32 CPU → y [M, N] = x·Wᵀ (made for small M)
    linear = FewRowsLinear(weight)     the same for one fixed weight, checked once: y = linear(x) [R7]
    why = few_rows_unavailable()       None when the kernel runs here, else why not, in one line

Used by the decoding loop (grpo.decode_linears [G8]) for the linear layers of a decoding step, whose rows are the
B·G sequences being sampled (8 at the main job's shape): y[m, n] = Σ_k x[m, k]·w[n, k].

[R1] Why: at 8 rows torch's CPU matmul (MKL's small-M path) read the weights at 6–16 GB/s here against
     37–49 GB/s for a plain read, so a decoding step of smollm2-135m (540 MB of fp32 weights) took 66–77 ms
     in its linear layers alone, 4.5–5.4× the step's floor (scripts/bench_generate.py step 1b, two runs;
     this kernel: 22 ms, 1.5×, docs/bench_generate.md). A decoding step
     is a stream of weights against a handful of rows: each weight should be read from memory once, used
     for every row while it is in a register, and the next weights should already be on their way.
[R2] The loop: a block of 3 rows of W against 8 rows of x, 16 columns of k per step: 3 weight vectors
     and 1 x vector in registers, 24 accumulators (3·8 of the 32 AVX-512 registers), 24 fused multiply-
     adds per 11 loads. Each (n, m) pair sums in 16 lanes over k; the 16 lanes are added at the end. Rows
     of x beyond 8 run in further passes over the same block, which is then in L1; many rows (a prompt's
     prefill) in tiles of 512 KiB of x (which stay in L2), W read once per tile. K need not be a multiple
     of 16 (the tail is loaded under a mask, the other lanes as 0), nor N of 3. Compute-bound at many
     rows, it ran at 180–220 GFLOP/s on 2 threads here from 64 to 2048 rows, against 140–170 for torch's
     F.linear (MKL) at the same shapes of smollm2 (at 8 rows: 120–180 against 27–66; a one-off
     microbenchmark, not in a bench script).
[R3] Software prefetch 8 KiB ahead along W: without it the LM head (49,152 × 576, 113 MB) streamed at
     15 GB/s with 2 threads here, with it at 32 GB/s (a plain x.sum() of it: 37 GB/s).
[R4] Threads: an OpenMP loop over the blocks of W's rows, torch.get_num_threads() threads, each a contiguous
     range (one stream of weights per core), in torch's own OpenMP runtime (kernels/cpp_build.py [B3]).
[R5] Exactness: every product and sum in fp32, the same sum as any fp32 matmul in another order; against
     float64, |y − y₆₄| stays within fp32 rounding of Σ|x·w| (tests). The decoding loop's recorded
     log-probs then match a forward pass as before (tests/test_decode.py).
[R6] Build and availability: kernels/cpp_build.py [B1] [B2] (KERNELS_FEW_ROWS=0 switches it off). Unavailable,
     the caller uses torch.mm (grpo.decode_linears [G8]): the same distribution, slower.
[R7] Per call, Python: FewRowsLinear checks its weight once, so a call is an output allocation and the
     C call: 4.7 µs a call here, against 9.0 µs for few_rows_linear, which checks both tensors (a decoding
     step of smollm2 makes 211 calls).
"""
from __future__ import annotations

import ctypes

import torch

from .cpp_build import load_function

_state: dict = {}  # "fn": the loaded function or None, "why": why not or None (decided once per process)


def _load() -> None:
    """Decide once per process: the kernel's function in _state["fn"], or why not in _state["why"] [R6]."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn, why = load_function("few_rows_gemm.cpp", "few_rows_mm", [p, i64, i64, p, i64, p, ctypes.c_int],
                            switch="KERNELS_FEW_ROWS")
    _state.update(fn=fn, why=why)


def few_rows_unavailable() -> str | None:
    """None when few_rows_linear can run in this process, else the reason, one line [R6]."""
    if not _state:
        _load()
    return _state.get("why")


def _checked(x: torch.Tensor, weight: torch.Tensor) -> None:
    why = few_rows_unavailable()
    if why is not None:
        raise RuntimeError(f"kernels.few_rows: the AVX-512 kernel is unavailable: {why}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"few_rows_linear takes x [M, K] and weight [N, K], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu" \
            or weight.device.type != "cpu":
        raise ValueError(f"few_rows_linear takes fp32 CPU tensors, got {x.dtype} on {x.device} and "
                         f"{weight.dtype} on {weight.device}")


class FewRowsLinear:
    """x ↦ x·Wᵀ by the AVX-512 kernel [R2] for one fixed weight [N, K] (fp32 CPU, made contiguous if it is
    not), checked once here [R7]. Calling it with x [M, K] fp32 CPU returns [M, N] fp32."""

    def __init__(self, weight: torch.Tensor):
        _checked(weight[:0], weight)
        self.weight = weight.contiguous()
        self.N, self.K = weight.shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.K or x.dtype != torch.float32 or x.device.type != "cpu":
            _checked(x, self.weight)  # raises, naming what is wrong
        x = x.contiguous()
        y = torch.empty(x.shape[0], self.N, dtype=torch.float32)
        if x.shape[0] and self.N:
            _state["fn"](x.data_ptr(), x.shape[0], self.K, self.weight.data_ptr(), self.N, y.data_ptr(),
                         torch.get_num_threads())
        return y


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """y = x·Wᵀ, y[m, n] = Σ_k x[m, k]·w[n, k], by the AVX-512 kernel [R2].

    Args: x [M, K] and weight [N, K], fp32 on the CPU (made contiguous if they are not). Returns [M, N] fp32.
    Raises RuntimeError when the kernel is unavailable (few_rows_unavailable() says why), ValueError for
    other shapes or dtypes.
    """
    return FewRowsLinear(weight)(x)  # checks the weight, then x
