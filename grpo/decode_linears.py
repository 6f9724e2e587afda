"""The linear layers of grpo.decode's loop: every decoding step's matmuls, made fast for its few rows.

    with decoding_linears(model, dtype="float32", kernel="auto"):   # inside: the patched layers [G8], [G9]
        model(input_ids=step_ids, ...)

[G8] The linear layers, for the few rows of a decoding step (8 at the main job's shape): a LoRA layer runs
     with its adapter merged, x·(W + ΔW)ᵀ, ΔW = B·A·α/r (PEFT's get_delta_weight), instead of PEFT's
     x·Wᵀ + (x·Aᵀ)·Bᵀ·α/r: one matmul instead of three and none of PEFT's per-call Python; the merged
     weights exist only while sampling (one copy of the adapted weights: 540 MB for smollm2-135m in fp32,
     below the update's peak) and the trainer's weights are untouched. The matmul itself (fp32, outside
     autocast) is kernels.few_rows' AVX-512 kernel (Sampling.linear_kernel = "auto", the default, where it
     runs: an AVX-512 CPU with a C++ compiler; KERNELS_FEW_ROWS=0 switches it off): it streams each weight
     from memory once for all rows, where torch's CPU matmul at 8 rows read the weights at a third of the
     memory's speed here (kernels/few_rows.py [R1]). The prompt's prefill goes through it too, at any
     number of rows: it also outran torch's matmul there (compute-bound, 180–220 against 140–170 GFLOP/s at
     64–2048 rows on this CPU, kernels/few_rows.py [R2]; on a CPU whose BLAS does better, linear_kernel =
     "torch"). Elsewhere, or with linear_kernel = "torch", torch.mm for few rows (≤ FEW_ROWS; a prefill of
     more keeps the module's own path), with several threads as (W·xᵀ)ᵀ, which MKL splits over W's rows
     (x·Wᵀ with 8 rows ran at 2/3 of that speed on 2 threads, and faster on 1, where the order is kept); a CPU fp32 run that cannot use the
     kernel says why once (a warning). Each path changes only the rounding of the logits (the recorded
     log-probs match a forward pass of the unmerged model to 1e-5, tests/test_decode.py).
[G9] bf16 sampler (Sampling.linear_dtype = "bfloat16"; off by default, GRPOSettings.sampler_dtype): within
     the block every patched layer of [G8] (plain nn.Linear, the LM head included, and LoRA layers with
     their merged W + ΔW) holds a bf16 copy of its weight, half the bytes a decoding step reads; a step's
     rows x [N, 1, D] (one position per row, any N) are cast to bf16, run through the same mm (torch's CPU
     bf16 mm accumulates in fp32 and rounds its output to bf16), and the result is cast back to x's dtype,
     where the bias (kept in x's dtype: D values, nothing to save) is added. So the logits of every sampled
     token come from bf16 matmuls, while the prompt's prefill (several positions per row, however few rows)
     runs the module's own fp32 path and the trainer still scores in fp32: a different distribution from
     the fp32 policy, and the recorded log-probs and entropies are the bf16 sampler's own.
     The rollout says so (Rollout.sampler = "hf-bf16"), and the trainer applies the sampler–trainer IS
     correction to it as to vLLM's (grpo.trainer [D12], ALGORITHMS.md §5). The bf16 copies exist only while
     sampling; the model's weights are untouched. With linear_dtype = "float32" (default) nothing changes.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from kernels.few_rows import FewRowsLinear, few_rows_unavailable


FEW_ROWS = 64  # [G8] torch.mm's few rows (a decoding step's); a prefill of more keeps the module's own path
LINEAR_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # Sampling.linear_dtype → the copies' dtype [G9]
LINEAR_KERNELS = ("auto", "torch")  # Sampling.linear_kernel: kernels.few_rows where it runs, or torch.mm [G8]


def _few_rows(weight: torch.Tensor, bias: torch.Tensor | None, default, cast: torch.dtype | None = None,
              kernel: bool = False):
    """(forward, rows) of a patched layer [G8]. rows(x) = x·Wᵀ + b for x [n, in] in W's dtype (fp32 unless
    `cast`), no gradient and no autocast (the caller's promise: grpo.decode_step calls it directly): by
    kernels.few_rows when `kernel` (fp32 CPU weights), else by torch.mm, as (W·xᵀ)ᵀ when several threads share
    it and x has few rows; with `cast` (bf16 [G9]) from a copy of W in that dtype, x cast to it and the result
    cast back. forward(x) is the module's: rows(x) where that applies (the kernel for any rows, the prompt's
    prefill too; torch.mm for a few; bf16 for a decoding step's x [N, 1, in] only), else the module's own path
    (autocast would run torch.mm in bf16, and the kernel has no backward: those keep torch's path)."""
    transpose = torch.get_num_threads() > 1 and weight.device.type == "cpu"  # MKL's split over W's rows
    dtype = weight.dtype  # what x must be for this path (the model's weights' dtype)
    kernel = kernel and cast is None and dtype == torch.float32 and weight.device.type == "cpu" \
        and weight.is_contiguous()
    if cast is not None:
        weight = weight.to(cast)  # [out, in], dropped with the patch on exit [G9]
    linear = FewRowsLinear(weight) if kernel else None  # kernels/few_rows.py [R7]

    def by(x: torch.Tensor, by_kernel: bool) -> torch.Tensor:  # [n, in] → [n, out]
        if by_kernel:
            y = linear(x)
        else:
            x_w = x.to(weight.dtype)  # a no-op without `cast`
            few = transpose and x.shape[0] <= FEW_ROWS
            y = torch.mm(weight, x_w.t()).t().contiguous() if few else torch.mm(x_w, weight.t())
            if cast is not None:
                y = y.to(x.dtype)  # [G9]; without `cast` y is as torch made it (bf16 under autocast, as the module)
        return y if bias is None else y + bias

    def rows(x: torch.Tensor) -> torch.Tensor:
        return by(x, kernel)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or x.dim() < 2 or x.dtype != dtype:
            return default(x, *args, **kwargs)
        by_kernel = kernel and not torch.is_autocast_enabled("cpu") and not (
            torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        if not by_kernel:
            few = x.numel() // x.shape[-1] <= FEW_ROWS
            step = x.dim() == 3 and x.shape[1] == 1  # [N, 1, in]: one position per row, a decoding step [G9]
            if not (step if cast is not None else few):
                return default(x, *args, **kwargs)
        return by(x.reshape(-1, x.shape[-1]), by_kernel).reshape(*x.shape[:-1], weight.shape[0])

    return forward, rows


def _use_kernel(model, kernel: str, cast: torch.dtype | None) -> bool:
    """Whether the fp32 decoding matmuls go through kernels.few_rows [G8]; a CPU fp32 model that asks for it
    ("auto") and cannot have it is told why, once per reason."""
    if kernel not in LINEAR_KERNELS:
        raise ValueError(f"linear_kernel must be one of {', '.join(LINEAR_KERNELS)}, got {kernel!r}")
    p = next(iter(model.parameters()), None)
    if kernel == "torch" or cast is not None or p is None or p.device.type != "cpu" or p.dtype != torch.float32:
        return False
    why = few_rows_unavailable()
    if why is not None and not why.startswith("switched off"):
        warnings.warn(f"grpo.decode_linears: sampling's linear layers use torch.mm, not the AVX-512 kernel "
                      f"(kernels.few_rows: {why}); the same samples, slower", stacklevel=3)
    return why is None


def decoding_linear_layers(model) -> list[tuple[torch.nn.Module, bool]]:
    """The layers decoding_linears patches [G8], as (module, is_lora): every PEFT LoRA layer that is active
    and not merged, and every plain nn.Linear outside them (the LM head included)."""
    from grpo.policy import lora_layers

    lora = dict(lora_layers(model))  # name → PEFT LoRA layer that is active and not merged
    inside_lora = {f"{name}.{child}" for name in lora for child, _ in lora[name].named_modules() if child}
    return [(m, name in lora) for name, m in model.named_modules()
            if name in lora or (type(m) is torch.nn.Linear and name not in inside_lora)]


@contextlib.contextmanager
def decoding_linears(model, dtype: str = "float32", kernel: str = "auto"):
    """Within the block, the linear layers of `model` run a decoding step's few rows fast [G8]: a plain
    nn.Linear with its own W, a LoRA layer with its adapter merged, W + ΔW (grpo.policy.merged_lora_weight),
    computed once here and dropped on exit; the model's own weights are not touched.
    dtype: "float32" (the weights as they are) or "bfloat16", bf16 copies of W (or W + ΔW) for every
    decoding step's rows [G9]. kernel: "auto" (kernels.few_rows for fp32 CPU weights where it runs) or
    "torch" (torch.mm) [G8]. Yields {module: rows}, rows(x [n, in]) = x·Wᵀ + b as the patched layer computes
    it without the module's checks (for grpo.decode_step, under no_grad and outside autocast)."""
    from grpo.policy import merged_lora_weight

    if dtype not in LINEAR_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(LINEAR_DTYPES)}, got {dtype!r}")
    cast = LINEAR_DTYPES[dtype]
    use_kernel = _use_kernel(model, kernel, cast)
    layers = {m: (merged_lora_weight(m), m.get_base_layer().bias) if is_lora else (m.weight, m.bias)
              for m, is_lora in decoding_linear_layers(model)}  # module → (W or W + ΔW, bias)
    patched, rows = [], {}
    for m, (weight, bias) in layers.items():
        m.forward, rows[m] = _few_rows(weight, bias, m.forward, cast, use_kernel)
        patched.append(m)
    try:
        yield rows
    finally:
        for m in patched:
            del m.forward
