"""Per-token log-prob of the sampled token and Shannon entropy of the next-token distribution.

Definition (ALGORITHMS.md §1), for one row of logits x ∈ ℝ^V, sampled token y, temperature T:

    z = x / T,   p = softmax(z),   lp(y) = log p(y),   H = −Σ_v p(v) log p(v)      (nats)

One-pass form computed by every fused backend, with the row max taken on the raw logits:

    M = max_v x_v,   s_v = (x_v − M) / T ≤ 0,   S = Σ_v e^{s_v},   W = Σ_v e^{s_v} · s_v
    log Z = M/T + log S,   H = log S − W/S,   lp(y) = s_y − log S

Gradient (autograd.Function below; backends implement it tile by tile):

    ∂/∂z_j:  dz_j = g_lp · (1[j=y] − p_j) − g_H · p_j · (log p_j + H),   dx_j = dz_j / T

Symbol → code:
    x logits, viewed as (B, T, V) rows        y ids          T temperature (inv_t = 1/T)
    M m (B, T) fp32                           log S log_s    H entropy      lp(y) logp
    g_lp, g_H grad_logp, grad_entropy         keep = mask (True = scored position)
Shapes: (B, T, V) is B blocks of T rows (grpo/__init__.py letters); when the leading dims merge into
one, B = 1 and T = N rows. In the equations T is the temperature, as in ALGORITHMS.md.

Implementation details:
[D1] The shift uses the raw-logit max and is applied before the temperature: s = (x − M)/T, never
     x/T − M/T, so near-max entries keep full relative precision even for |x| ≈ 1e4.
[D2] H = log S − W/S uses the *shifted* W (terms ≤ 0), not log Z − Σ p·z, which cancels
     catastrophically in fp32 when |z| is large (error ~ |z|·2⁻²⁴ ≈ 1e-3 at |z| = 1e4).
[D3] −inf entries (top-k/top-p/min-p processors, padding) have e^{s} = 0 and contribute 0 to S and W
     (0·(−inf) is never formed), so H is the entropy of the renormalised support.
[D4] A row is invalid when M or H is not finite: all entries −inf (no support), or a NaN / +inf entry.
     Unmasked invalid rows raise ValueError (one host sync per call, shared with the ids range
     check); masked rows may hold anything: their outputs and gradients are exactly 0.
[D5] Masked positions may carry any id (e.g. −100); ids are replaced by 0 there before any gather.
[D6] log Z is saved as the pair (M, log S) so that backward recomputes s = (x − M)/T exactly as the
     forward did [D1]; with H that is 3 fp32 values per row; the logits themselves are the input.
[D7] Leading dims are viewed as (B, T) rows without copying; a slice such as logits[:, P-1:-1] of a
     (B, L, V) tensor is handled through its two strides. The last dim must have stride 1: a
     transposed tensor is refused rather than silently copied (that copy is as large as the input).
[D8] Under no grad (rollout scoring) no autograd.Function is built and nothing is saved.
[D9] Supported input dtypes fp32 / bf16 / fp16 (fp64 too on `reference`); results are fp32, and
     accumulation is at least fp32 whatever the input (float64 in the compiled CPU sums, [C8]).
[D10] Autocast is off, for the input's device type, in the public function and in backward (which
     autograd runs inside or outside the caller's autocast region, wherever `.backward()` is called):
     under torch.autocast(dtype=bf16) a matmul returns bf16, silently breaking [D9] (issue #12).
     This op has no matmul today, so its numbers did not change; the guard keeps the promise for
     future code and gives the compiled CPU path one autocast state: a caller's autocast no longer
     triggers a recompile [C2]. Keyed on the input's
     device: a CUDA input gets CUDA autocast switched off even when only CPU autocast looks active,
     and an outer autocast of another device acts on nothing here, since every tensor we create lives
     on the input's device. Inputs are never cast: bf16 stays bf16 and is accumulated in fp32.
     Not torch.amp.custom_fwd/custom_bwd: they fix one device type when the function is decorated.
Backends: `reference` (float64 autograd, the definition), `cpu` (kernels.entropy_cpu: one compiled
pass, chunked eager fallback), `triton` (kernels.entropy_triton); `auto` = triton on CUDA else cpu.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "cpu", "triton")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------- layout
def _rows_view(logits: torch.Tensor) -> torch.Tensor:
    """View logits [..., V] as (B, T, V) rows without a copy [D7]."""
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., V] with at least one leading dim, got {tuple(logits.shape)}")
    V = logits.shape[-1]
    if logits.stride(-1) != 1 and V > 1:
        raise ValueError("logits must have stride 1 along the vocabulary (last) dim; got strides "
                         f"{logits.stride()}: call .contiguous() explicitly if the copy is intended")
    for shape in ((1, -1, V), (-1, logits.shape[-2], V)):
        try:
            return logits.view(shape)  # (B, T, V): B = 1 when all leading dims merge
        except RuntimeError:
            continue
    raise ValueError(f"logits with strides {logits.stride()} cannot be viewed as rows without a copy; "
                     "call .contiguous() explicitly")


def _check(logits, ids, mask, temperature, backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dtypes = _DTYPES + ((torch.float64,) if backend == "reference" else ())
    if logits.dtype not in dtypes:
        raise ValueError(f"logits dtype {logits.dtype} not supported by backend {backend!r}: use one of {dtypes}")
    if ids.shape != logits.shape[:-1]:
        raise ValueError(f"ids shape {tuple(ids.shape)} must equal logits.shape[:-1] = {tuple(logits.shape[:-1])}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids must be int64 (or int32), got {ids.dtype}")
    if mask is not None and (mask.shape != ids.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be bool with shape {tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a positive finite float, got {temperature!r}")


def _resolve(backend: str, x: torch.Tensor) -> str:
    if backend == "auto":  # without Triton installed, CUDA tensors take the (device-agnostic) cpu path
        return "triton" if x.is_cuda and importlib.util.find_spec("triton") is not None else "cpu"
    if backend == "triton" and not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU testing)")
    return backend


def _impl(name: str):
    if name == "triton":  # imported lazily: TRITON_INTERPRET must be set before the kernels are decorated
        from kernels import entropy_triton
        return entropy_triton
    from kernels import entropy_cpu
    return entropy_cpu


def _autocast_off(x: torch.Tensor):
    """Autocast disabled for x's device type [D10]; nothing to disable where it has none (meta)."""
    if not torch.amp.is_autocast_available(x.device.type):
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


def _raise_if_invalid(bad_rows: torch.Tensor, bad_ids: torch.Tensor, V: int) -> None:
    """One host sync for both checks [D4] [D5]."""
    n_rows, n_ids = torch.stack([bad_rows.sum(), bad_ids.sum()]).tolist()
    if n_ids:
        first = bad_ids.flatten().nonzero()[0, 0].item()
        raise ValueError(f"{n_ids} unmasked id(s) outside [0, {V}) (first at flat position {first}); "
                         "mask those positions out")
    if n_rows:
        first = bad_rows.flatten().nonzero()[0, 0].item()
        raise ValueError(f"{n_rows} unmasked row(s) have no finite logit (all −inf) or contain NaN/+inf "
                         f"(first at flat position {first}); mask them out or fix the logits")


# ------------------------------------------------------------------------- fused forward/backward
def _fused_forward(x, ids, keep, inv_t, impl):
    """x (B, T, V); ids, keep (B, T). Returns logp, H, m, log_s (B, T) fp32; masked rows are 0."""
    V = x.shape[-1]
    bad_ids = (ids < 0) | (ids >= V)  # (B, T)
    ids = ids.masked_fill(bad_ids | ~keep, 0).long()  # [D5]
    logp, entropy, m, log_s = impl.forward(x, ids, inv_t)  # each (B, T) fp32
    _raise_if_invalid(~(torch.isfinite(m) & torch.isfinite(entropy)) & keep, bad_ids & keep, V)  # [D4]
    zero = torch.zeros((), device=x.device)
    logp, entropy = torch.where(keep, logp, zero), torch.where(keep, entropy, zero)
    return logp, entropy, m, log_s, ids


class _LogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ids, keep, inv_t, impl):
        logp, entropy, m, log_s, safe_ids = _fused_forward(x, ids, keep, inv_t, impl)
        ctx.save_for_backward(x, safe_ids, keep, m, log_s, entropy)  # [D6]
        ctx.inv_t, ctx.impl = inv_t, impl
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        x, ids, keep, m, log_s, entropy = ctx.saved_tensors
        with _autocast_off(x):  # the whole backward in fp32 [D10]
            zero = torch.zeros((), device=x.device)
            # Masked rows get g = 0 and are skipped by the kernels [D4] (their m may be ±inf or NaN).
            g_lp = zero.expand_as(m) if grad_logp is None else torch.where(keep, grad_logp.float(), zero)
            g_h = zero.expand_as(m) if grad_entropy is None else torch.where(keep, grad_entropy.float(), zero)
            grad_x = ctx.impl.backward(x, ids, keep, m, log_s, entropy, g_lp.contiguous(), g_h.contiguous(),
                                       ctx.inv_t)
        return grad_x, None, None, None, None


# ------------------------------------------------------------------------------------- reference
def _reference(x, ids, keep, inv_t):
    """The definition in float64 with plain autograd; x (B, T, V)."""
    V = x.shape[-1]
    bad_ids = (ids < 0) | (ids >= V)
    ids = ids.masked_fill(bad_ids | ~keep, 0).long()
    xd = x.double()
    bad_rows = ~torch.isfinite(xd.amax(-1))  # (B, T)
    _raise_if_invalid(bad_rows & keep, bad_ids & keep, V)
    xd = torch.where((bad_rows & ~keep)[..., None], 0.0, xd)  # masked invalid rows: finite dummies
    logp_all = torch.log_softmax(xd * inv_t, dim=-1)  # (B, T, V)
    p = logp_all.exp()
    entropy = -(p * torch.where(p > 0, logp_all, 0.0)).sum(-1)  # (B, T) [D3]: 0·log 0 := 0
    logp = logp_all.gather(-1, ids[..., None]).squeeze(-1)  # (B, T)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    return torch.where(keep, logp, zero).float(), torch.where(keep, entropy, zero).float()


# ---------------------------------------------------------------------------------------- public
def token_logprobs_and_entropy(logits: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0,
                               mask: torch.Tensor | None = None, backend: str = "auto"):
    """lp(y) = log softmax(x/T)[y] and H = −Σ_v p_v log p_v per row, in one pass over the logits.

    Args:
        logits: [..., V] fp32 / bf16 / fp16 (e.g. (N, V) per decoding step, or a (B, T, V) slice).
        ids: [...] int64, the sampled token of each row.
        temperature: T > 0, the sampling temperature (scores the model distribution at T).
        mask: [...] bool, True where the position is scored; False rows give 0 and get no gradient and
            may hold invalid logits or ids.
        backend: "auto" (triton on CUDA, cpu otherwise), "reference", "cpu" or "triton".
    Returns:
        (logp, entropy): two fp32 [...] tensors, differentiable w.r.t. logits.
    Raises:
        ValueError on an unmasked row with no finite logit or with NaN/+inf [D4], an unmasked id
        outside [0, V), or an unsupported layout/dtype.
    """
    _check(logits, ids, mask, temperature, backend)
    backend = _resolve(backend, logits)
    lead = logits.shape[:-1]
    x = _rows_view(logits)  # (B, T, V) [D7]
    ids3 = ids.reshape(x.shape[:2])  # (B, T)
    keep = torch.ones_like(ids3, dtype=torch.bool) if mask is None else mask.reshape(x.shape[:2])  # (B, T)
    inv_t = 1.0 / float(temperature)
    if x.shape[0] * x.shape[1] == 0:  # N = 0: empty outputs, still connected to the graph
        empty = logits.sum(-1).float() * 0  # [...] (empty)
        return empty, empty.clone()
    with _autocast_off(logits):  # [D10]
        if backend == "reference":
            logp, entropy = _reference(x, ids3, keep, inv_t)
        elif torch.is_grad_enabled() and logits.requires_grad:
            logp, entropy = _LogpEntropy.apply(x, ids3, keep, inv_t, _impl(backend))
        else:  # [D8]
            logp, entropy = _fused_forward(x, ids3, keep, inv_t, _impl(backend))[:2]
    return logp.reshape(lead), entropy.reshape(lead)
