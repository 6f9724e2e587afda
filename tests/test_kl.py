"""grpo.kl.kl_k3 against a float64 reference written longhand."""
import math

import pytest
import torch
from conftest import TOL

from grpo.kl import kl_k3


def reference_kl(logp, ref_logp):
    """e^x − x − 1, x = ref − logp, per element in Python float64."""
    rows = []
    for lp_row, ref_row in zip(logp.double().tolist(), ref_logp.double().tolist()):
        rows.append([math.exp(r - lp) - (r - lp) - 1.0 for lp, r in zip(lp_row, ref_row)])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 33)])
def test_kl_k3_matches_float64_reference(dtype, shape):
    logp = (-torch.rand(shape) * 5).to(dtype)
    ref_logp = (logp.float() + torch.randn(shape) * 0.7).to(dtype)
    got = kl_k3(logp, ref_logp)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), reference_kl(logp, ref_logp), **TOL[dtype])


def test_kl_k3_is_exactly_zero_at_equality():
    logp = -torch.rand(4, 9) * 10
    assert torch.equal(kl_k3(logp, logp.clone()), torch.zeros(4, 9))


def test_kl_k3_is_nonnegative_including_near_zero():
    logp = -torch.rand(1000, 100) * 10
    scale = torch.logspace(-9, 1, 100)  # (100,) differences from 1e-9 (cancellation regime) to 10
    ref_logp = logp + torch.randn(1000, 100) * scale
    assert (kl_k3(logp, ref_logp) >= 0).all()


def test_kl_k3_gradient_matches_its_derivative():
    # d/d logp (e^x − x − 1) = −e^x + 1, d/d ref = e^x − 1, with x = ref − logp
    logp = (-torch.rand(3, 5, dtype=torch.float64) * 4).requires_grad_()
    ref_logp = (logp.detach() + torch.randn(3, 5, dtype=torch.float64)).requires_grad_()
    kl_k3(logp, ref_logp).sum().backward()
    x = (ref_logp - logp).detach()
    torch.testing.assert_close(logp.grad, 1 - x.exp(), **TOL[torch.float64])
    torch.testing.assert_close(ref_logp.grad, x.exp() - 1, **TOL[torch.float64])


def test_kl_k3_hand_worked_example():
    # π_θ = 0.5, π_ref = 0.25: x = log 0.25 − log 0.5 = log 0.5 = −0.6931472
    # kl = e^x − x − 1 = 0.5 + 0.6931472 − 1 = 0.1931472
    # π_θ = 0.25, π_ref = 0.5: x = +0.6931472, kl = 2 − 0.6931472 − 1 = 0.3068528
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref_logp = torch.tensor([[math.log(0.25), math.log(0.5)]])
    expected = torch.tensor([[0.1931472, 0.3068528]])
    torch.testing.assert_close(kl_k3(logp, ref_logp), expected, **TOL[torch.float32])
