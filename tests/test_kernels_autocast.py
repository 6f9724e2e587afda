"""The fused ops keep their fp32 promise under bf16 autocast (issue #12).

The trainer calls kernels.lm_head_logprobs_and_entropy and kernels.token_logprobs_and_entropy inside
torch.autocast(<device>, dtype=torch.bfloat16). CPU autocast stands in for CUDA autocast here: like
CUDA's, it runs matmul / addmm / linear in bf16. A bf16 tensor produced by an autocast forward is a
legitimate input, so the property is: results and gradients equal the float64 reference computed on
the inputs *as given* (bf16 values upcast), within conftest.TOL, whether `.backward()` runs outside the
autocast region (as the trainer does) or inside it; outputs are fp32; the caller's autocast state is
the same after the call. The float64 references are the longhand ones of the two kernel test files.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOL

from kernels import lm_head_logprobs_and_entropy, token_logprobs_and_entropy
from test_kernels_entropy import cpu_mode, make_case, reference  # noqa: F401 (cpu_mode is a fixture)
from test_kernels_lm_head import make_head, reference_head

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
AUTOCAST_DTYPES = [torch.float32, torch.bfloat16]  # fp32 master weights, bf16 activations


def autocast_state():
    return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_autocast_cache_enabled()


def ragged_mask(shape, seed=2):
    """Random bool mask with the first position kept and the last one dropped."""
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.6
    mask.view(-1)[0], mask.view(-1)[-1] = True, False
    return mask


def scored_loss(logp, H, mask, seed=1):
    """Σ_kept (a·lp + b·H) with fixed random upstream gradients a, b."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(mask.shape, generator=g), torch.randn(mask.shape, generator=g)
    return torch.where(mask, a.to(logp.dtype) * logp + b.to(H.dtype) * H, 0).sum()


def assert_matches_reference(logp, H, ref_logp, ref_H, mask, input_dtype):
    assert logp.dtype == H.dtype == torch.float32
    zero = torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(logp.double(), torch.where(mask, ref_logp, zero), **TOL[input_dtype])
    torch.testing.assert_close(H.double(), torch.where(mask, ref_H, zero), **TOL[input_dtype])


def assert_grads_match(ours, exact):
    for got, want in zip(ours, exact):
        torch.testing.assert_close(got.grad.double(), want.grad, **TOL[("stored", got.grad.dtype)])


# ------------------------------------------------------------------------------------- LM head
@pytest.mark.parametrize("backward_where", ["outside", "inside"])
@pytest.mark.parametrize("V", [123, 4099])
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_lm_head_under_bf16_autocast_matches_float64_reference_forward_and_backward(dtype, V, backward_where):
    hidden, weight, bias, ids = make_head(dtype, N=(3, 7), V=V)
    mask = ragged_mask(ids.shape)
    ours = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = autocast_state()
        logp, H = lm_head_logprobs_and_entropy(ours[0], ours[1], ids.masked_fill(~mask, -100), temperature=0.8,
                                               bias=ours[2], mask=mask, chunk_tokens=4,
                                               chunk_vocab=50 if V < 1000 else 1000)  # ragged last tiles
        assert autocast_state() == before == (True, torch.bfloat16, True)
        loss = scored_loss(logp, H, mask)
        if backward_where == "inside":
            loss.backward()
            assert autocast_state() == before
    if backward_where == "outside":
        loss.backward()
    assert not torch.is_autocast_enabled("cpu")
    exact = [t.double().requires_grad_() for t in (hidden, weight, bias)]
    ref_logp, ref_H = reference_head(*exact, ids, 0.8)
    assert_matches_reference(logp, H, ref_logp.detach(), ref_H.detach(), mask, dtype)
    scored_loss(ref_logp, ref_H, mask).backward()
    assert all(t.grad.dtype == dtype for t in ours)
    assert_grads_match(ours, exact)
    assert (ours[0].grad[~mask] == 0).all()


def test_lm_head_scores_the_bf16_hidden_state_of_an_autocast_forward_against_its_float64_upcast():
    D, V = 16, 4099
    body = torch.nn.Linear(D, D)  # stands in for the model body; fp32 parameters
    _, weight, bias, ids = make_head(torch.float32, N=(2, 5), D=D, V=V)
    weight.requires_grad_(), bias.requires_grad_()
    mask = ragged_mask(ids.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = body(torch.randn(2, 5, D))  # (2, 5, D) bf16: what the trainer's forward hands over
        assert hidden.dtype == torch.bfloat16
        hidden.retain_grad()
        logp, H = lm_head_logprobs_and_entropy(hidden, weight, ids, temperature=1.3, bias=bias, mask=mask,
                                               chunk_tokens=3, chunk_vocab=1000)
        scored_loss(logp, H, mask).backward()
    exact = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    ref_logp, ref_H = reference_head(*exact, ids, 1.3)
    assert_matches_reference(logp, H, ref_logp.detach(), ref_H.detach(), mask, torch.bfloat16)
    scored_loss(ref_logp, ref_H, mask).backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == bias.grad.dtype == torch.float32
    assert_grads_match([hidden, weight, bias], exact)
    assert body.weight.grad is not None and torch.isfinite(body.weight.grad).all()


# --------------------------------------------------------------------------------- logits op
def check_token_op_under_autocast(case, dtype, backend, backward_where):
    x, ids, _ = make_case(case, dtype)
    mask = ragged_mask(ids.shape)
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = autocast_state()
        logp, H = token_logprobs_and_entropy(xg, ids.masked_fill(~mask, -100), temperature=0.8, mask=mask,
                                             backend=backend)
        assert autocast_state() == before == (True, torch.bfloat16, True)
        loss = scored_loss(logp, H, mask)
        if backward_where == "inside":
            loss.backward()
            assert autocast_state() == before
    if backward_where == "outside":
        loss.backward()
    x64 = x.double().requires_grad_()
    ref_logp, ref_H = reference(x64, ids, 0.8)
    assert_matches_reference(logp, H, ref_logp.detach(), ref_H.detach(), mask, dtype)
    scored_loss(ref_logp, ref_H, mask).backward()
    assert xg.grad.dtype == dtype
    assert_grads_match([xg], [x64])
    assert (xg.grad[~mask] == 0).all()


PATHS = [("reference", "eager"), ("cpu", "eager"), ("cpu", "compiled")]


@pytest.mark.parametrize("backward_where", ["outside", "inside"])
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("backend,cpu_mode", PATHS, indirect=["cpu_mode"])
def test_token_logprobs_under_bf16_autocast_match_float64_reference_forward_and_backward(
        backend, cpu_mode, dtype, backward_where):
    for case in ["extreme_pm1e4_3d", "topk_inf_padding_V4099"]:  # V = 123 (B, T, V) and V = 4099 (N, V)
        check_token_op_under_autocast(case, dtype, backend, backward_where)


@pytest.mark.parametrize("cpu_mode", ["compiled"], indirect=True)
def test_cpu_compiled_path_is_not_recompiled_for_the_callers_autocast_state(cpu_mode):
    from torch._dynamo.utils import counters
    x, ids, t = make_case("topk_inf_padding_V4099", torch.float32)
    token_logprobs_and_entropy(x, ids, temperature=t, backend="cpu")
    graphs = counters["stats"]["unique_graphs"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, H = token_logprobs_and_entropy(x, ids, temperature=t, backend="cpu")
    assert counters["stats"]["unique_graphs"] == graphs, "the autocast call compiled a second graph"
    torch.testing.assert_close(H.double(), reference(x, ids, t)[1], **TOL[torch.float32])


@pytest.mark.skipif(INTERPRETED, reason="this is the parent launcher")
def test_triton_backend_under_bf16_autocast_passes_in_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore::RuntimeWarning")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "interpreted",
                          __file__], cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


@pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child process")
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_triton_backend_under_bf16_autocast_matches_float64_reference_interpreted(dtype, monkeypatch):
    from kernels import entropy_triton
    monkeypatch.setattr(entropy_triton, "BLOCK_V", 512)  # V = 4099: 9 tiles; V = 123: one ragged tile
    for backward_where in ("outside", "inside"):
        for case in ["extreme_pm1e4_3d", "topk_inf_padding_V4099"]:
            check_token_op_under_autocast(case, dtype, "triton", backward_where)
