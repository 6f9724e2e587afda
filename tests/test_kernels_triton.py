"""Triton kernels of kernels.entropy against the float64 reference, on the CPU under TRITON_INTERPRET=1.

The interpreter must be switched on before a @triton.jit function is defined, so the cases run in a
child pytest process with TRITON_INTERPRET=1 (this same file); in the parent run they are skipped and a
single test launches the child. Tiles are small (BLOCK_V = 64, or 512 for V = 4099 to keep the
interpreter fast) so that rows span several tiles and V = 123, 300, 4099 leave a ragged last tile.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TOL
from test_kernels_entropy import CASES, DTYPES, check_forward, check_gradient, make_case, reference

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
child_only = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child process")


@pytest.mark.skipif(INTERPRETED, reason="this is the parent launcher")
def test_triton_kernels_pass_their_cases_under_the_interpreter():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore::RuntimeWarning")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


@pytest.fixture
def small_tiles(monkeypatch):
    from kernels import entropy_triton
    original = entropy_triton._block
    monkeypatch.setattr(entropy_triton, "BLOCK_V", 64)
    monkeypatch.setattr(entropy_triton, "_block", lambda V: (512, 4) if V > 1000 else original(V))


@child_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_forward_matches_float64_reference(case, dtype, small_tiles):
    check_forward(*make_case(case, dtype), backend="triton")


@child_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_backward_matches_float64_autograd(dtype, small_tiles):
    for case in ["topk_inf_padding_V4099", "extreme_pm1e4_3d", "ragged_tail_V300", "one_row_V123"]:
        check_gradient(*make_case(case, dtype), backend="triton")


@child_only
def test_triton_masked_and_invalid_rows_follow_the_cpu_contract(small_tiles):
    from kernels import token_logprobs_and_entropy
    x, ids, t = make_case("ragged_tail_V300", torch.float32)
    x[0], x[2, 5], ids[0], ids[2] = float("-inf"), float("nan"), -100, 10**6
    mask = torch.tensor([False, True, False])
    xg = x.clone().requires_grad_()
    logp, H = token_logprobs_and_entropy(xg, ids, temperature=t, mask=mask, backend="triton")
    (logp.sum() + H.sum()).backward()
    assert logp[0] == logp[2] == H[0] == H[2] == 0
    assert torch.isfinite(xg.grad).all() and (xg.grad[[0, 2]] == 0).all()
    torch.testing.assert_close(H[1:2].double(), reference(x[1:2], ids[1:2], t)[1], **TOL[torch.float32])
    for bad in ("nan", "minus_inf"):  # NaN must be seen even though tl.max need not propagate it [T4]
        y = x[1:2].clone()
        y[0, 7] = float("nan") if bad == "nan" else y[0, 7]
        y = y if bad == "nan" else torch.full_like(y, float("-inf"))
        with pytest.raises(ValueError, match="finite logit"):
            token_logprobs_and_entropy(y, ids[1:2], backend="triton")


@child_only
def test_triton_handles_strided_rows_of_a_sliced_logits_tensor(small_tiles):
    from kernels import token_logprobs_and_entropy
    full = torch.randn(2, 6, 123)
    ids = torch.randint(0, 123, (2, 4))
    got = token_logprobs_and_entropy(full[:, 1:-1], ids, backend="triton")
    for u, v in zip(got, reference(full[:, 1:-1], ids)):
        torch.testing.assert_close(u.double(), v, **TOL[torch.float32])
