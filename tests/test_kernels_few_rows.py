"""kernels.few_rows: x·Wᵀ for a few rows by the AVX-512 kernel, against float64; its build and its fallbacks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.few_rows import few_rows_linear, few_rows_unavailable

ROOT = Path(__file__).resolve().parents[1]
needs_kernel = pytest.mark.skipif(few_rows_unavailable() is not None,
                                  reason=f"kernels.few_rows unavailable here: {few_rows_unavailable()}")


def _fp32_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """|y − y₆₄| ≤ K·ε₃₂·Σ_k |x_k·w_k| per entry (any fp32 order of the K products and sums) [R5]."""
    return (x.double().abs() @ w.double().abs().t()) * x.shape[1] * torch.finfo(torch.float32).eps


@needs_kernel
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("M", [1, 2, 7, 8, 9, 16, 17, 64])
@pytest.mark.parametrize("N,K", [(1, 1), (2, 15), (3, 16), (4, 17), (100, 33), (192, 576), (577, 1536)])
def test_few_rows_linear_matches_the_float64_reference(M, N, K, n_threads):
    """Every row count (passes of 8 and a remainder), every K (multiples of 16 and a masked tail), every N
    (blocks of 3 and a remainder), on 1 and 2 threads."""
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        y = few_rows_linear(x, w)
    finally:
        torch.set_num_threads(threads)
    ref = x.double() @ w.double().t()
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert ((y.double() - ref).abs() <= _fp32_bound(x, w)).all()
    assert (y.double() - ref).abs().max() > 0 or K < 16  # fp32, not a float64 computation in disguise


@needs_kernel
def test_few_rows_linear_takes_strided_inputs_and_the_lm_head_s_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(576, 8, generator=g).t()  # [8, 576], not contiguous
    w = torch.randn(576, 4096, generator=g)[:, ::2].t()  # [2048, 576], strided rows
    y = few_rows_linear(x, w)
    ref = x.double() @ w.double().t()
    assert ((y.double() - ref).abs() <= _fp32_bound(x, w)).all()
    assert few_rows_linear(torch.randn(0, 5), torch.randn(3, 5)).shape == (0, 3)
    assert torch.equal(few_rows_linear(torch.randn(2, 0), torch.randn(3, 0)), torch.zeros(2, 3))


@needs_kernel
def test_few_rows_linear_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="fp32 CPU tensors, got torch.float64"):
        few_rows_linear(torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x \[M, K\] and weight \[N, K\], got \(2, 4\) and \(3, 5\)"):
        few_rows_linear(torch.randn(2, 4), torch.randn(3, 5))


@needs_kernel
def test_the_kernel_runs_in_torch_s_own_openmp_runtime():
    """[R4]: after the kernel is loaded, one libgomp is mapped in the process: torch's."""
    few_rows_linear(torch.randn(8, 16), torch.randn(3, 16))
    gomp = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    assert len(gomp) == 1 and Path(next(iter(gomp))).parent == Path(torch.__file__).parent / "lib", gomp


def _probe(tmp_path: Path, **env) -> str:
    """few_rows_unavailable() in a fresh process with this environment (KERNELS_CACHE in tmp_path)."""
    code = ("from kernels.few_rows import few_rows_unavailable, _state; import sys; w = few_rows_unavailable(); "
            "print('WHY', w)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "KERNELS_CACHE": str(tmp_path), **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.split("WHY ", 1)[1].strip()


def test_the_kernel_is_switched_off_by_its_environment_variable(tmp_path):
    assert _probe(tmp_path, KERNELS_FEW_ROWS="0") == "switched off (KERNELS_FEW_ROWS=0)"
    assert not any(tmp_path.iterdir())  # nothing built


@needs_kernel
def test_a_compiler_that_fails_is_named_and_leaves_nothing_half_built(tmp_path):
    fake = tmp_path / "fake-g++"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo fake 1.0; exit 0; }\n"
                    "echo 'fatal: no AVX-512 here' >&2\nexit 1\n")
    fake.chmod(0o755)
    why = _probe(tmp_path / "cache", CXX=str(fake))
    assert why == "fake-g++ could not build few_rows_gemm.cpp: fatal: no AVX-512 here"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    missing = tmp_path / "missing-g++"
    why = _probe(tmp_path / "cache", CXX=str(missing))
    assert why == f"cannot run the C++ compiler {missing}: No such file or directory"


@needs_kernel
def test_the_build_is_made_once_and_reused(tmp_path):
    """[R6]: the first process compiles into KERNELS_CACHE (temporary name, then renamed); the next loads it."""
    assert _probe(tmp_path) == "None"
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("few_rows_gemm-") and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    assert _probe(tmp_path) == "None"
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


@needs_kernel
def test_few_rows_linear_object_checks_its_weight_once_and_each_x():
    """[R7]: FewRowsLinear(W)(x) is few_rows_linear(x, W); a wrong x still gets the one-line error."""
    from kernels.few_rows import FewRowsLinear

    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(50, 40, generator=g), torch.randn(5, 40, generator=g)
    linear = FewRowsLinear(w)
    assert torch.equal(linear(x), few_rows_linear(x, w)) and torch.equal(linear(x[:, :]), linear(x))
    with pytest.raises(ValueError, match=r"got \(5, 39\) and \(50, 40\)"):
        linear(x[:, :39])
    with pytest.raises(ValueError, match="fp32 CPU tensors, got torch.float64"):
        linear(x.double())
    with pytest.raises(ValueError, match="fp32 CPU tensors"):
        FewRowsLinear(w.double())


@needs_kernel
def test_ranks_that_build_at_once_all_load_the_kernel(tmp_path):
    """[R6]: torchrun's ranks start together on an empty cache: each compiles under its own temporary name
    and renames it into place, so every one of them loads a whole library."""
    code = ("import torch; from kernels.few_rows import few_rows_linear, few_rows_unavailable; "
            "assert few_rows_unavailable() is None, few_rows_unavailable(); "
            "x, w = torch.randn(3, 20), torch.randn(7, 20); "
            "assert torch.allclose(few_rows_linear(x, w), x @ w.t(), atol=1e-5); print('ok')")
    env = {**os.environ, "KERNELS_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["ok"] * 3
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1 and names[0].endswith(".so"), names  # one library, no temporary file left
