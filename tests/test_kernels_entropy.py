"""kernels.token_logprobs_and_entropy: every CPU backend against an independent float64 reference.

The reference below is written longhand from the definition (ALGORITHMS.md §1) and shares no code with
kernels/. It runs on x.double() of the already rounded input, so only our error is measured (TOL).
The Triton backend runs the same cases in tests/test_kernels_triton.py under TRITON_INTERPRET=1.
"""
import math

import pytest
import torch
from conftest import TOL
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kernels import entropy_cpu, token_logprobs_and_entropy

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def reference(x, ids, temperature=1.0):
    """float64 (logp, H) from the definition; −inf entries have p = 0 and add nothing to H."""
    z = x.double() / temperature  # (..., V)
    finite = z > float("-inf")
    M = z.amax(-1, keepdim=True)
    e = torch.where(finite, torch.exp(z - M), 0.0)
    log_z = M + torch.log(e.sum(-1, keepdim=True))  # (..., 1)
    p = e / e.sum(-1, keepdim=True)
    log_p = torch.where(finite, z - log_z, 0.0)  # 0 stands in where p = 0 (0·log 0 := 0)
    H = -(p * log_p).sum(-1)
    logp = (z - log_z).gather(-1, ids[..., None]).squeeze(-1)
    return logp, H


def make_case(name, dtype, seed=0):
    """(logits, ids, temperature) for a named situation; ids always inside the support."""
    g = torch.Generator().manual_seed(seed)
    shape, temperature = {
        "one_row_V123": ((1, 123), 1.0),
        "topk_inf_padding_V4099": ((5, 4099), 0.7),
        "extreme_pm1e4_3d": ((2, 3, 123), 1.0),
        "uniform_rows": ((4, 123), 1.0),
        "near_one_hot_V4099": ((3, 4099), 1.0),
        "ragged_tail_V300": ((3, 300), 1.3),
        "empty_N0": ((0, 123), 1.0),
    }[name]
    x = torch.randn(shape, generator=g) * 3
    if name == "extreme_pm1e4_3d":
        x = (torch.rand(shape, generator=g) * 2 - 1) * 1e4
    if name == "uniform_rows":
        x = torch.zeros(shape)
    if name == "near_one_hot_V4099":
        x = torch.randn(shape, generator=g)
        x[..., 17] = 40.0
    if name == "topk_inf_padding_V4099":  # what a top-k=40 logits processor leaves
        kth = x.topk(40, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    x = x.to(dtype)
    support = (x > float("-inf")).float() + 1e-6 * torch.rand(shape, generator=g)  # prefer finite entries
    ids = support.reshape(-1, shape[-1]).argmax(-1).reshape(shape[:-1]) if x.numel() else torch.zeros(shape[:-1], dtype=torch.long)
    ids = torch.where(torch.rand(shape[:-1], generator=g) < 0.5, ids,
                      torch.multinomial(support.reshape(-1, shape[-1]), 1, generator=g).reshape(shape[:-1])
                      if x.numel() else ids)
    return x, ids, temperature


CASES = ["one_row_V123", "topk_inf_padding_V4099", "extreme_pm1e4_3d", "uniform_rows", "near_one_hot_V4099",
         "ragged_tail_V300", "empty_N0"]


@pytest.fixture
def cpu_mode(request, monkeypatch):
    """'eager' or 'compiled' CPU path; the compiled one runs at every size and must not fall back."""
    mode = request.param
    monkeypatch.setattr(entropy_cpu, "COMPILE", mode == "compiled")
    monkeypatch.setattr(entropy_cpu, "_COMPILE_MIN_NUMEL", 0)
    if mode == "compiled":
        torch._dynamo.reset()  # each test starts with dynamo's recompile budget (compiled code is cached on disk)
    yield mode
    assert entropy_cpu.COMPILE == (mode == "compiled"), "torch.compile failed and the path fell back to eager"


class LargestTensor(TorchDispatchMode):
    """Records the largest *new* storage (in elements) any aten op returns while active; views don't count."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def check_forward(x, ids, temperature, backend):
    logp, H = token_logprobs_and_entropy(x, ids, temperature=temperature, backend=backend)
    ref_logp, ref_H = reference(x, ids, temperature)
    assert logp.dtype == H.dtype == torch.float32 and logp.shape == ids.shape
    torch.testing.assert_close(logp.double(), ref_logp, **TOL[x.dtype])
    torch.testing.assert_close(H.double(), ref_H, **TOL[x.dtype])


def check_gradient(x, ids, temperature, backend):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(ids.shape, generator=g), torch.randn(ids.shape, generator=g)  # upstream g_lp, g_H
    xg = x.clone().requires_grad_()
    logp, H = token_logprobs_and_entropy(xg, ids, temperature=temperature, backend=backend)
    ((a * logp).sum() + (b * H).sum()).backward()
    x64 = x.double().requires_grad_()
    ref_logp, ref_H = reference(x64, ids, temperature)
    ((a.double() * ref_logp).sum() + (b.double() * ref_H).sum()).backward()
    assert xg.grad.dtype == x.dtype
    torch.testing.assert_close(xg.grad.double(), x64.grad, **TOL[("stored", x.dtype)])


# ------------------------------------------------------------------------------- against reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_reference_backend_matches_float64_definition(case, dtype):
    check_forward(*make_case(case, dtype), backend="reference")


@pytest.mark.parametrize("cpu_mode", ["eager"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_cpu_eager_path_matches_float64_reference(case, dtype, cpu_mode):
    check_forward(*make_case(case, dtype), backend="cpu")


# The compiled path is the same tile math as the eager one; each dtype / size class costs a compile
# (~5 s cold, <1 s from inductor's disk cache), so it runs a subset: fp32 on every case but N ≤ 1
# (handled before any backend, or a size-1 specialisation), bf16 on two. fp16 shares bf16's code path.
COMPILED_CASES = [c for c in CASES if c not in ("one_row_V123", "empty_N0")]


@pytest.mark.parametrize("cpu_mode", ["compiled"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_compiled_path_matches_float64_reference(dtype, cpu_mode):
    cases = COMPILED_CASES if dtype == torch.float32 else ["topk_inf_padding_V4099", "extreme_pm1e4_3d"]
    for case in cases:  # one test per dtype: the compile is paid once
        check_forward(*make_case(case, dtype), backend="cpu")


@pytest.mark.parametrize("cpu_mode", ["eager"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_eager_gradients_match_float64_autograd(dtype, cpu_mode):
    for case in ["topk_inf_padding_V4099", "extreme_pm1e4_3d", "ragged_tail_V300", "one_row_V123"]:
        check_gradient(*make_case(case, dtype), backend="cpu")


@pytest.mark.parametrize("cpu_mode", ["compiled"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_compiled_gradients_match_float64_autograd(dtype, cpu_mode):
    for case in ["topk_inf_padding_V4099", "extreme_pm1e4_3d"]:
        check_gradient(*make_case(case, dtype), backend="cpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_backend_gradients_match_float64_autograd(dtype):
    check_gradient(*make_case("topk_inf_padding_V4099", dtype), backend="reference")


# ----------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_entropy_is_between_zero_and_log_vocab(backend):
    for case in ["one_row_V123", "extreme_pm1e4_3d", "uniform_rows", "near_one_hot_V4099", "topk_inf_padding_V4099"]:
        x, ids, t = make_case(case, torch.float32)
        _, H = token_logprobs_and_entropy(x, ids, temperature=t, backend=backend)
        assert (H >= -TOL[torch.float32]["atol"]).all()
        assert (H <= math.log(x.shape[-1]) + TOL[torch.float32]["atol"]).all()


def test_uniform_row_has_entropy_log_vocab_and_logp_minus_log_vocab():
    x, ids, _ = make_case("uniform_rows", torch.float32)
    logp, H = token_logprobs_and_entropy(x, ids, backend="cpu")
    torch.testing.assert_close(H, torch.full_like(H, math.log(123)), **TOL[torch.float32])
    torch.testing.assert_close(logp, torch.full_like(logp, -math.log(123)), **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_entropy_and_logp_are_invariant_to_adding_a_constant_to_a_row(backend):
    # Dyadic logits (k/64) plus 256 are exact in fp32, so the two inputs are the same distribution exactly.
    x = torch.randint(-640, 640, (6, 4099)).float() / 64
    ids = torch.randint(0, 4099, (6,))
    shift = torch.tensor([0.0, 256.0, -256.0, 1024.0, 3.0, -7.5])[:, None]
    a = token_logprobs_and_entropy(x, ids, backend=backend)
    b = token_logprobs_and_entropy(x + shift, ids, backend=backend)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **TOL[torch.float32])


def test_temperature_equals_scaling_the_logits():
    x = torch.randint(-640, 640, (4, 300)).float() / 64  # dyadic: x / 2 is exact
    ids = torch.randint(0, 300, (4,))
    for u, v in zip(token_logprobs_and_entropy(x, ids, temperature=2.0), token_logprobs_and_entropy(x / 2, ids)):
        torch.testing.assert_close(u, v, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_hand_worked_two_token_example(backend):
    # logits [0, ln 3, −inf]: p = [1/4, 3/4, 0] (the −inf entry is outside the support)
    # H = −(1/4·ln 1/4 + 3/4·ln 3/4) = 0.25·1.3862944 + 0.75·0.2876821 = 0.3465736 + 0.2157616 = 0.5623351
    # lp(y=1) = ln 3/4 = −0.2876821;  lp(y=0) = ln 1/4 = −1.3862944
    x = torch.tensor([[0.0, math.log(3.0), float("-inf")]] * 2)
    logp, H = token_logprobs_and_entropy(x, torch.tensor([1, 0]), backend=backend)
    torch.testing.assert_close(H, torch.tensor([0.5623351, 0.5623351]), **TOL[torch.float32])
    torch.testing.assert_close(logp, torch.tensor([-0.2876821, -1.3862944]), **TOL[torch.float32])


# ---------------------------------------------------------------------------- masks and errors
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_masked_rows_are_zero_get_no_gradient_and_may_hold_invalid_logits(backend):
    x, ids, t = make_case("ragged_tail_V300", torch.float32)
    x[0] = float("-inf")  # no support
    x[2, 5] = float("nan")
    ids[0], ids[2] = -100, 10**6  # ignore-index and out-of-range ids
    mask = torch.tensor([False, True, False])
    xg = x.clone().requires_grad_()
    logp, H = token_logprobs_and_entropy(xg, ids, temperature=t, mask=mask, backend=backend)
    (logp.sum() + H.sum()).backward()
    assert logp[0] == logp[2] == H[0] == H[2] == 0
    assert torch.isfinite(xg.grad).all() and (xg.grad[[0, 2]] == 0).all()
    ref_logp, ref_H = reference(x[1:2], ids[1:2], t)
    torch.testing.assert_close(logp[1:2].double(), ref_logp, **TOL[torch.float32])
    torch.testing.assert_close(H[1:2].double(), ref_H, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("problem", ["all_minus_inf", "nan", "plus_inf", "id_out_of_range"])
def test_unmasked_invalid_rows_and_ids_raise_value_error(backend, problem):
    x, ids, _ = make_case("one_row_V123", torch.float32)
    if problem == "all_minus_inf":
        x[:] = float("-inf")
    if problem == "nan":
        x[0, 3] = float("nan")
    if problem == "plus_inf":
        x[0, 3] = float("inf")
    if problem == "id_out_of_range":
        ids[:] = 123
    with pytest.raises(ValueError, match="finite logit|outside"):
        token_logprobs_and_entropy(x, ids, backend=backend)


def test_strided_slice_of_logits_matches_its_contiguous_copy_and_transposed_input_raises():
    full = torch.randn(3, 9, 123)  # (B, L, V); the loss scores logits[:, P-1:-1]
    sliced = full[:, 3:-1]  # (B, T, V), not viewable as (B·T, V)
    ids = torch.randint(0, 123, sliced.shape[:-1])
    xg = sliced.detach().clone().requires_grad_()
    for u, v in zip(token_logprobs_and_entropy(sliced, ids, backend="cpu"),
                    token_logprobs_and_entropy(sliced.contiguous(), ids, backend="cpu")):
        torch.testing.assert_close(u, v, **TOL[torch.float32])
    full.requires_grad_()
    sum(token_logprobs_and_entropy(full[:, 3:-1], ids, backend="cpu")).sum().backward()
    sum(token_logprobs_and_entropy(xg, ids, backend="cpu")).sum().backward()
    torch.testing.assert_close(full.grad[:, 3:-1], xg.grad, **TOL[torch.float32])
    assert (full.grad[:, :3] == 0).all() and (full.grad[:, -1] == 0).all()
    with pytest.raises(ValueError, match="stride 1"):
        token_logprobs_and_entropy(torch.randn(123, 4).t(), torch.zeros(4, dtype=torch.long), backend="cpu")


@pytest.mark.parametrize("cpu_mode", ["eager"], indirect=True)
def test_cpu_eager_forward_never_allocates_a_rows_by_vocab_temporary(cpu_mode):
    x = torch.randn(512, 4096)  # 2^21 elements; chunks are ≈ 2^18
    ids = torch.randint(0, 4096, (512,))
    with LargestTensor() as seen:
        token_logprobs_and_entropy(x, ids, backend="cpu")
    assert seen.largest <= x.numel() // 4, f"an op produced {seen.largest} elements (N·V = {x.numel()})"


def test_no_grad_call_returns_the_same_values_without_a_graph():
    x, ids, t = make_case("topk_inf_padding_V4099", torch.float32)
    x.requires_grad_()
    with_graph = token_logprobs_and_entropy(x, ids, temperature=t)
    with torch.no_grad():
        without = token_logprobs_and_entropy(x, ids, temperature=t)
    assert all(o.grad_fn is None for o in without) and all(o.grad_fn is not None for o in with_graph)
    for u, v in zip(with_graph, without):
        assert torch.equal(u.detach(), v)


def test_cpu_path_falls_back_to_eager_with_a_warning_when_compile_fails(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run
    monkeypatch.setattr(entropy_cpu, "COMPILE", True)
    monkeypatch.setattr(entropy_cpu, "_COMPILE_MIN_NUMEL", 0)
    monkeypatch.setattr(entropy_cpu, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    x, ids, t = make_case("ragged_tail_V300", torch.float32)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        logp, H = token_logprobs_and_entropy(x, ids, temperature=t, backend="cpu")
    assert entropy_cpu.COMPILE is False
    torch.testing.assert_close(H.double(), reference(x, ids, t)[1], **TOL[torch.float32])


def test_unknown_backend_dtype_and_shape_mismatch_are_errors():
    x, ids = torch.randn(2, 5), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="backend"):
        token_logprobs_and_entropy(x, ids, backend="cuda")
    with pytest.raises(ValueError, match="dtype"):
        token_logprobs_and_entropy(x.double(), ids, backend="cpu")
    with pytest.raises(ValueError, match="ids shape"):
        token_logprobs_and_entropy(x, ids[:1])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(x, ids, temperature=0.0)
    with pytest.raises(ValueError, match="triton"):
        token_logprobs_and_entropy(x, ids, backend="triton")
