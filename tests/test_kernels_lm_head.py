"""kernels.lm_head_logprobs_and_entropy against float64 logits h·Wᵀ + b, and its memory contract."""
import pytest
import torch

from conftest import TOL
from kernels import lm_head_logprobs_and_entropy, token_logprobs_and_entropy
from test_kernels_entropy import DTYPES, LargestTensor, reference


def make_head(dtype, N=(2, 5), D=16, V=123, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*N, D, generator=g).to(dtype)
    weight = (torch.randn(V, D, generator=g) / D**0.5 * 4).to(dtype)
    bias = torch.randn(V, generator=g).to(dtype)
    ids = torch.randint(0, V, N, generator=g)
    return hidden, weight, bias, ids


def reference_head(hidden, weight, bias, ids, temperature):
    logits = hidden.double() @ weight.double().t() + (0 if bias is None else bias.double())  # (..., V)
    return reference(logits, ids, temperature)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lm_head_outputs_match_float64_reference_with_ragged_tiles(dtype):
    hidden, weight, bias, ids = make_head(dtype)
    for b in (None, bias):  # 10 tokens in tiles of 3, 123 vocab entries in tiles of 50
        logp, H = lm_head_logprobs_and_entropy(hidden, weight, ids, temperature=0.8, bias=b,
                                               chunk_tokens=3, chunk_vocab=50)
        ref_logp, ref_H = reference_head(hidden, weight, b, ids, 0.8)
        assert logp.dtype == torch.float32 and logp.shape == ids.shape
        torch.testing.assert_close(logp.double(), ref_logp, **TOL[dtype])
        torch.testing.assert_close(H.double(), ref_H, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_lm_head_gradients_match_float64_autograd_for_hidden_weight_and_bias(dtype):
    hidden, weight, bias, ids = make_head(dtype)
    a, b = torch.randn(ids.shape), torch.randn(ids.shape)  # upstream gradients of logp and H
    ours = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    logp, H = lm_head_logprobs_and_entropy(ours[0], ours[1], ids, temperature=0.8, bias=ours[2],
                                           chunk_tokens=4, chunk_vocab=32)
    ((a * logp).sum() + (b * H).sum()).backward()
    exact = [t.double().requires_grad_() for t in (hidden, weight, bias)]
    ref_logp, ref_H = reference_head(*exact, ids, 0.8)
    ((a.double() * ref_logp).sum() + (b.double() * ref_H).sum()).backward()
    for got, want in zip(ours, exact):
        assert got.grad.dtype == dtype
        torch.testing.assert_close(got.grad.double(), want.grad, **TOL[("stored", dtype)])


def test_float64_inputs_are_computed_and_returned_in_float64():
    """[L6]: a float64 model checks rank-count invariance to ~1e-15; fp32 tiles would cap it at ~1e-7."""
    hidden, weight, bias, ids = make_head(torch.float64, V=4099)
    a, b = torch.randn(ids.shape, dtype=torch.float64), torch.randn(ids.shape, dtype=torch.float64)
    ours = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    logp, H = lm_head_logprobs_and_entropy(ours[0], ours[1], ids, temperature=0.7, bias=ours[2],
                                           chunk_tokens=3, chunk_vocab=1000)
    ((a * logp).sum() + (b * H).sum()).backward()
    exact = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    ref_logp, ref_H = reference_head(*exact, ids, 0.7)
    ((a * ref_logp).sum() + (b * ref_H).sum()).backward()
    assert logp.dtype == H.dtype == torch.float64
    torch.testing.assert_close(logp, ref_logp, **TOL[torch.float64])
    torch.testing.assert_close(H, ref_H, **TOL[torch.float64])
    for got, want in zip(ours, exact):
        assert got.grad.dtype == torch.float64
        torch.testing.assert_close(got.grad, want.grad, **TOL[torch.float64])


def test_frozen_weight_gets_no_gradient_and_hidden_gradient_is_unchanged():
    hidden, weight, _, ids = make_head(torch.float32)
    h1, h2, w_trainable = hidden.clone().requires_grad_(), hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    sum(lm_head_logprobs_and_entropy(h1, weight, ids, chunk_tokens=4, chunk_vocab=32)).sum().backward()
    sum(lm_head_logprobs_and_entropy(h2, w_trainable, ids, chunk_tokens=4, chunk_vocab=32)).sum().backward()
    assert weight.grad is None
    torch.testing.assert_close(h1.grad, h2.grad, **TOL[torch.float32])


def test_lm_head_equals_token_kernel_on_materialised_logits():
    hidden, weight, bias, ids = make_head(torch.float32, V=300)
    logits = hidden @ weight.t() + bias  # (2, 5, 300)
    for u, v in zip(lm_head_logprobs_and_entropy(hidden, weight, ids, bias=bias, temperature=1.3, chunk_vocab=64),
                    token_logprobs_and_entropy(logits, ids, temperature=1.3)):
        torch.testing.assert_close(u, v, **TOL[torch.float32])


def test_lm_head_never_builds_a_tokens_by_vocab_tensor_forward_or_backward():
    N, D, V = 256, 8, 4096
    hidden, weight, _, ids = make_head(torch.float32, N=(N,), D=D, V=V)
    hidden.requires_grad_(), weight.requires_grad_()
    with LargestTensor() as seen:
        logp, H = lm_head_logprobs_and_entropy(hidden, weight, ids, chunk_tokens=32, chunk_vocab=256)
        (logp.sum() + H.sum()).backward()
    assert seen.largest <= max(32 * 256, V * D), f"an op produced {seen.largest} elements (N·V = {N * V})"


def test_masked_tokens_are_zero_and_get_no_gradient():
    hidden, weight, _, ids = make_head(torch.float32)
    mask = torch.rand(ids.shape) < 0.5
    mask[0, 0], mask[1, 0] = True, False
    ids = ids.masked_fill(~mask, -100)
    h = hidden.clone().requires_grad_()
    logp, H = lm_head_logprobs_and_entropy(h, weight, ids, mask=mask, chunk_tokens=3, chunk_vocab=50)
    (logp.sum() + H.sum()).backward()
    assert (logp[~mask] == 0).all() and (H[~mask] == 0).all()
    assert (h.grad[~mask] == 0).all() and (h.grad[mask].abs().sum(-1) > 0).all()
    ref_logp, _ = reference_head(hidden, weight, None, ids.clamp_min(0), 1.0)
    torch.testing.assert_close(logp[mask].double(), ref_logp[mask], **TOL[torch.float32])


def test_nan_hidden_state_raises_unless_masked():
    hidden, weight, _, ids = make_head(torch.float32)
    hidden[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lm_head_logprobs_and_entropy(hidden, weight, ids)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 2] = False
    logp, H = lm_head_logprobs_and_entropy(hidden, weight, ids, mask=mask)
    assert torch.isfinite(logp).all() and torch.isfinite(H).all()
