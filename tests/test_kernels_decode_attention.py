"""kernels.decode_attention: RoPE, the KV-cache write and one query per row, against float64; its fallbacks."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.decode_attention import decode_attention, decode_attention_unavailable

from conftest import TOL

ROOT = Path(__file__).resolve().parents[1]
needs_kernel = pytest.mark.skipif(
    decode_attention_unavailable() is not None,
    reason=f"kernels.decode_attention unavailable here: {decode_attention_unavailable()}")


def _reference(q, k, v, cos, sin, K, V, col, mask, scale):
    """The module docstring's equations longhand in float64: (out [N, H·hd], K, V after the write)."""
    N, Hkv, S, hd = K.shape
    H = q.shape[1] // hd
    q, k, v, cos, sin = (t.double() for t in (q, k, v, cos, sin))
    K, V = K.double().clone(), V.double().clone()
    half = hd // 2

    def rope(x, n):  # x [hd]: x·cos + rotate_half(x)·sin
        rotated = torch.cat([-x[half:], x[:half]])
        return x * cos[n] + rotated * sin[n]

    out = torch.zeros(N, H * hd, dtype=torch.float64)
    for n in range(N):
        for j in range(Hkv):
            K[n, j, col] = rope(k[n, j * hd:(j + 1) * hd], n)
            V[n, j, col] = v[n, j * hd:(j + 1) * hd]
        for h in range(H):
            j = h // (H // Hkv)
            qh = rope(q[n, h * hd:(h + 1) * hd], n)
            cols = [p for p in range(col + 1) if mask[n, p] != 0 or p == col]
            scores = [scale * float(qh @ K[n, j, p]) for p in cols]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            out[n, h * hd:(h + 1) * hd] = sum(w / total * V[n, j, p] for w, p in zip(weights, cols))
    return out, K, V


def _inputs(N, H, Hkv, hd, S, col, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, H * hd, generator=g)
    k, v = torch.randn(N, Hkv * hd, generator=g), torch.randn(N, Hkv * hd, generator=g)
    angle = torch.rand(N, hd // 2, generator=g) * 6.3
    cos, sin = torch.cat([angle.cos()] * 2, 1), torch.cat([angle.sin()] * 2, 1)  # [N, hd], as a RoPE table
    K, V = torch.randn(N, Hkv, S, hd, generator=g), torch.randn(N, Hkv, S, hd, generator=g)
    mask = (torch.rand(N, S, generator=g) > 0.3).long()  # [N, S]
    mask[0, :min(3, col)] = 0  # a left-padded row
    mask[-1, col] = 0  # the new position is attended whatever the mask says there
    return q, k, v, cos, sin, K, V, mask


@needs_kernel
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("N,H,Hkv,hd,S,col", [(1, 1, 1, 2, 1, 0), (3, 4, 2, 16, 20, 11), (8, 9, 3, 64, 40, 37),
                                              (2, 6, 6, 8, 5, 4), (2, 8, 1, 12, 9, 3), (5, 4, 2, 16, 30, 29)])
def test_decode_attention_matches_the_float64_reference(N, H, Hkv, hd, S, col, n_threads):
    """Grouped (H/Hkv 1, 2, 3, 4, 8), head dims with and without a 16-tail, the first and the last column,
    a left-padded row, 1 and 2 threads; the cache is written at col and nowhere else."""
    q, k, v, cos, sin, K, V, mask = _inputs(N, H, Hkv, hd, S, col, seed=N * 100 + H + hd + col)
    want, want_K, want_V = _reference(q, k, v, cos, sin, K, V, col, mask, scale=hd ** -0.5)
    before_K, before_V = K.clone(), V.clone()
    threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        out = decode_attention(q, k, v, cos, sin, K, V, col=col, mask=mask, scale=hd ** -0.5)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out.double(), want, **TOL[torch.float32])
    torch.testing.assert_close(K[:, :, col].double(), want_K[:, :, col], **TOL[torch.float32])
    assert torch.equal(V[:, :, col], v.view(N, Hkv, hd))
    others = torch.arange(S) != col
    assert torch.equal(K[:, :, others], before_K[:, :, others]) and torch.equal(V[:, :, others], before_V[:, :, others])


@needs_kernel
def test_masked_and_later_columns_of_the_cache_are_never_read():
    """A masked column weighs exactly 0 and a column after col is not attended: NaN there changes nothing."""
    q, k, v, cos, sin, K, V, mask = _inputs(4, 6, 2, 16, 24, 15, seed=7)
    want = decode_attention(q, k, v, cos, sin, K.clone(), V.clone(), col=15, mask=mask, scale=0.25)
    hidden = (mask == 0)[:, None, :, None].expand_as(K).clone()  # [N, Hkv, S, hd]
    hidden[:, :, 15] = False  # the column being written
    hidden[:, :, 16:] = True
    K[hidden], V[hidden] = float("nan"), float("nan")
    got = decode_attention(q, k, v, cos, sin, K, V, col=15, mask=mask, scale=0.25)
    assert torch.equal(got, want)


@needs_kernel
def test_a_hand_worked_attention():
    """One row, one head, hd 2, no rotation (cos 1, sin 0), scale 1, col 1:
    cached K[0] = (ln 3, 0), new k = (0, 0); q = (1, 0) → scores (ln 3, 0) → softmax (3/4, 1/4);
    cached V[0] = (4, 0), new v = (0, 8) → out = 3/4·(4, 0) + 1/4·(0, 8) = (3, 2)."""
    q, k, v = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[0.0, 8.0]])
    cos, sin = torch.ones(1, 2), torch.zeros(1, 2)
    K, V = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    K[0, 0, 0], V[0, 0, 0] = torch.tensor([math.log(3.0), 0.0]), torch.tensor([4.0, 0.0])
    out = decode_attention(q, k, v, cos, sin, K, V, col=1, mask=torch.ones(1, 2, dtype=torch.long), scale=1.0)
    torch.testing.assert_close(out, torch.tensor([[3.0, 2.0]]), **TOL[torch.float32])
    assert torch.equal(V[0, 0, 1], torch.tensor([0.0, 8.0]))


@needs_kernel
def test_wrong_shapes_and_dtypes_are_one_clear_error():
    q, k, v, cos, sin, K, V, mask = _inputs(2, 4, 2, 8, 6, 3, seed=1)
    with pytest.raises(ValueError, match=r"shapes q \(2, 32\), k \(2, 15\)"):
        decode_attention(q, k[:, :15], v, cos, sin, K, V, col=3, mask=mask, scale=1.0)
    with pytest.raises(ValueError, match="col 6 do not fit"):
        decode_attention(q, k, v, cos, sin, K, V, col=6, mask=mask, scale=1.0)
    with pytest.raises(ValueError, match="int64 CPU mask, got .*torch.bool"):
        decode_attention(q, k, v, cos, sin, K, V, col=3, mask=mask.bool(), scale=1.0)
    with pytest.raises(ValueError, match="contiguous fp32 CPU tensors"):
        decode_attention(q.double(), k, v, cos, sin, K, V, col=3, mask=mask, scale=1.0)


def test_the_kernel_is_switched_off_by_its_environment_variable(tmp_path):
    code = "from kernels.decode_attention import decode_attention_unavailable as u; print('WHY', u())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "KERNELS_CACHE": str(tmp_path), "KERNELS_DECODE_ATTENTION": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("WHY ", 1)[1].strip() == "switched off (KERNELS_DECODE_ATTENTION=0)"
    assert not any(tmp_path.iterdir())  # nothing built


@needs_kernel
@pytest.mark.parametrize("hd", [12, 64])
def test_scores_far_apart_underflow_to_zero_weight_as_in_float64(hd):
    """Scores spread over hundreds (e^−300 is 0 in fp32): the AVX-512 exponential (hd a multiple of 16) and
    expf (any other hd) weigh them as the float64 softmax does, to fp32 rounding."""
    q, k, v, cos, sin, K, V, mask = _inputs(3, 4, 2, hd, 50, 44, seed=hd)
    q = q * 40  # scores of magnitude ~100–300
    want, _, _ = _reference(q, k, v, cos, sin, K, V, 44, mask, scale=hd ** -0.5)
    out = decode_attention(q, k, v, cos, sin, K, V, col=44, mask=mask, scale=hd ** -0.5)
    torch.testing.assert_close(out.double(), want, **TOL[torch.float32])


@needs_kernel
def test_the_softmax_weights_are_float64_s_to_a_few_units_in_the_last_place():
    """V[p] = the p-th unit vector makes out the attention weights themselves: against the float64 softmax of
    the same fp32 scores, within 8 ulp (the AVX-512 exponential's polynomial and the sum's rounding) [A4]."""
    hd, width = 16, 16
    g = torch.Generator().manual_seed(3)
    K = torch.zeros(1, 1, width, hd)
    K[0, 0, :, 0] = torch.linspace(-30, 0, width)  # scores q·K = K[:, 0] with q = e_0: e^−30 … e^0
    K[0, 0, :, 0] += torch.rand(width, generator=g)
    V = torch.eye(width, hd)[None, None].clone()  # [1, 1, width, hd]
    q = torch.zeros(1, hd)
    q[0, 0] = 1.0
    k, v = K[0, 0, -1][None].clone(), V[0, 0, -1][None].clone()
    cos, sin = torch.ones(1, hd), torch.zeros(1, hd)
    out = decode_attention(q, k, v, cos, sin, K, V, col=width - 1, mask=torch.ones(1, width, dtype=torch.long),
                           scale=1.0)
    want = torch.softmax(K[0, 0, :, 0].double(), 0)  # [width]
    assert torch.all((out[0].double() - want).abs() <= 8 * torch.finfo(torch.float32).eps * want), (out[0], want)
