"""scripts/gpu_check.py: the parts that run without a GPU (helpers called directly, the no-CUDA exit)."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kernels import entropy_cpu, token_logprobs_and_entropy
from test_kernels_entropy import reference as suite_reference

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gc = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(gc)


@pytest.fixture
def eager_cpu(monkeypatch):
    monkeypatch.setattr(entropy_cpu, "COMPILE", False)  # the harness is under test, not torch.compile


# ------------------------------------------------------------------------------- command line
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_script_prints_one_error_line_and_exits_2(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "r")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [run.stderr.strip()] and run.stderr.startswith("error: no CUDA device: ")
    assert run.stdout == "" and not list(tmp_path.iterdir())


def test_an_unknown_check_name_is_a_one_line_error_listing_the_valid_ones():
    run = subprocess.run([sys.executable, "scripts/gpu_check.py", "--only", "kernels,nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1
    assert "nope" in run.stderr and "kernels, bench_entropy, lm_head, grpo_step, vllm_step, ddp" in run.stderr


# ------------------------------------------------------------------------- float64 comparisons
def test_reference_equals_the_kernel_suites_reference_and_zeroes_masked_rows():
    x = torch.randn(3, 4, 300) * 3
    x[0, 1, :250] = float("-inf")  # top-k style padding: p = 0 there
    ids = torch.randint(250, 300, (3, 4))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False
    x[2, 3] = float("nan")  # a masked row may hold anything
    logp, H = gc.reference_logp_entropy(x, ids, 0.7, mask)
    want_logp, want_H = suite_reference(x, ids, 0.7)
    torch.testing.assert_close(logp[mask], want_logp[mask], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(H[mask], want_H[mask], atol=1e-12, rtol=1e-12)
    assert logp[2, 3] == H[2, 3] == 0 and logp.dtype == torch.float64


def test_compare_passes_within_tol_and_flags_larger_errors_nan_and_shape_mismatch():
    want = torch.tensor([1.0, -100.0, 0.0], dtype=torch.float64)
    tol = dict(atol=1e-5, rtol=1e-5)
    ok = gc.compare(want + torch.tensor([0.0, 5e-4, 9e-6]), want, tol)  # 5e-4 < 1e-5 + 1e-5·100
    assert ok["ok"] and ok["max_err"] == pytest.approx(5e-4) and ok["worst_err_over_tol"] < 1
    bad = gc.compare(want + torch.tensor([3e-5, 0.0, 0.0]), want, tol)  # the bound at 1.0 is 2e-5
    assert not bad["ok"] and bad["worst_err_over_tol"] > 1
    assert not gc.compare(torch.tensor([1.0, float("nan"), 0.0]), want, tol)["ok"]
    assert not gc.compare(want[:1], want[:1].expand(2), tol)["ok"]


def test_kernel_cases_pass_for_the_cpu_backend_on_every_dtype_and_vocabulary(eager_cpu):
    numbers = gc.run_kernel_cases("cpu", backend="cpu", vocabs=(123, 4099))
    assert len(numbers["cases"]) == 6 and all(r["ok"] and r["worst_err_over_tol"] <= 1 for r in numbers["cases"])


def test_kernel_cases_pass_for_the_triton_backend_in_the_interpreter():
    pytest.importorskip("triton")
    code = ("import json, sys; sys.path.insert(0, 'tests'); import test_gpu_check as t; "
            "print(json.dumps(t.gc.run_kernel_cases('cpu', backend='triton', vocabs=(123, 4099))))")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore::RuntimeWarning")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    cases = json.loads(run.stdout.splitlines()[-1])["cases"]
    assert len(cases) == 6 and all(r["ok"] for r in cases)


def test_kernel_cases_flag_an_op_whose_gradient_alone_is_wrong(eager_cpu):
    def wrong_grad(x, ids, **kw):  # same values; the logits gradient is off by 1e-3 per entry
        logp, H = token_logprobs_and_entropy(x, ids, **kw)
        nudge = 1e-3 * x.float().nan_to_num(0.0, 0.0, 0.0).sum(-1)
        return logp + nudge - nudge.detach(), H

    with pytest.raises(gc.CheckFailed, match="V=123 float32") as e:
        gc.run_kernel_cases("cpu", backend="cpu", vocabs=(123,), fn=wrong_grad)
    assert all(r["logp_err"] == 0 or r["logp_err"] < 1e-5 for r in e.value.numbers["cases"])
    assert all(r["grad_err"] > 1e-4 for r in e.value.numbers["cases"])


def test_kernel_cases_flag_a_forward_off_by_one_ulp_of_bf16(eager_cpu):
    def wrong(x, ids, **kw):
        logp, H = token_logprobs_and_entropy(x, ids, **kw)
        return logp, H * (1 + 2**-8)

    with pytest.raises(gc.CheckFailed, match="outside TOL"):
        gc.run_kernel_cases("cpu", backend="cpu", vocabs=(123,), fn=wrong)


def test_lm_head_comparison_passes_the_fused_head_and_flags_bf16_logits_under_cpu_autocast():
    def bf16_logits(h, w, ids):  # a head whose logits come out of an autocast matmul, rounded to bf16
        logits = (h @ w.t()).float()  # (B, T, V)
        return token_logprobs_and_entropy(logits, ids, backend="reference")

    numbers = gc.compare_lm_head("cpu", N=(2, 40), D=64, V=1000)  # kernels.lm_head_logprobs_and_entropy
    assert numbers["ok"] and numbers["worst_err_over_tol"] <= 1 and numbers["tokens"] == 80
    with pytest.raises(gc.CheckFailed, match="logp") as e:
        gc.compare_lm_head("cpu", N=(2, 40), D=64, V=1000, fn=bf16_logits)
    assert e.value.numbers["logp_err"] > 1e-3 and not torch.backends.cuda.matmul.allow_tf32


# --------------------------------------------------------------------------------- bandwidth
def test_peak_bandwidth_is_looked_up_by_the_most_specific_device_name():
    table = {"NVIDIA H200": 4800, "NVIDIA GH200 480GB": 4000, "NVIDIA H100 80GB HBM3": 3350, "NVIDIA H100 PCIe": 2000,
             "NVIDIA A100-SXM4-80GB": 2039, "NVIDIA A100-PCIE-40GB": 1555, "NVIDIA A10": 600, "NVIDIA L40S": 864,
             "NVIDIA L4": 300, "NVIDIA GeForce RTX 4090": 1008, "Tesla T4": 320, "Some Future GPU": None}
    assert {name: gc.peak_bandwidth_gbps(name) for name in table} == table


def test_read_floor_is_bytes_over_time_against_the_bandwidth():
    # 2 GB read in 1 ms = 2000 GB/s; at 4000 GB/s one read takes 0.5 ms, so 2× the floor, half the bandwidth
    got = gc.read_floor(2 * 10**9, 1e-3, 4000)
    assert got == pytest.approx({"GBps": 2000, "x_read_floor": 2.0, "fraction_of_bandwidth": 0.5})


# ------------------------------------------------------------------------------- run and report
def test_run_check_turns_skips_wrong_results_crashes_and_overruns_into_statuses():
    def crash():
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    def wrong():
        raise gc.CheckFailed("outside TOL", {"err": 1.0})

    def skip():
        raise gc.SkipCheck("needs 2 GPUs")

    assert gc.run_check("a", lambda: ("fine", {"x": 1}), 10)["status"] == "pass"
    assert gc.run_check("b", skip, 10) | {"seconds": 0} == {
        "name": "b", "status": "skip", "reason": "needs 2 GPUs", "seconds": 0, "budget_s": 10, "numbers": {}}
    failed = gc.run_check("c", wrong, 10)
    assert (failed["status"], failed["reason"], failed["numbers"]) == ("fail", "outside TOL", {"err": 1.0})
    crashed = gc.run_check("d", crash, 10)
    assert crashed["status"] == "fail" and crashed["reason"] == "RuntimeError: CUDA error: an illegal memory access"
    assert "in crash" in crashed["numbers"]["traceback"]
    slow = gc.run_check("e", lambda: ("fine", {}), -1)
    assert slow["status"] == "fail" and slow["reason"].startswith("over its time budget")


def test_main_writes_json_and_markdown_and_exits_1_when_a_check_fails(tmp_path, monkeypatch):
    props = SimpleNamespace(name="NVIDIA Test GPU", major=9, minor=0, total_memory=80e9)
    for name, value in {"is_available": lambda: True, "get_device_properties": lambda i: props,
                        "device_count": lambda: 1, "empty_cache": lambda: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(gc, "CHECKS", {"good": (lambda: ("fine", {"GBps": 1234.5}), 10),
                                       "bad": (lambda: 1 / 0, 10), "unused": (lambda: ("", {}), 10)})
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path / "docs" / "r"), "--only", "good,bad"])
    with pytest.raises(SystemExit) as e:
        gc.main()
    assert e.value.code == 1
    report = json.loads((tmp_path / "docs" / "r.json").read_text())
    assert report["device"] == {"name": "NVIDIA Test GPU", "capability": "9.0", "memory_gb": 80.0, "count": 1}
    assert [(c["name"], c["status"]) for c in report["checks"]] == [("good", "pass"), ("bad", "fail")]
    assert report["checks"][1]["reason"] == "ZeroDivisionError: division by zero"
    assert report["versions"]["torch"] == torch.__version__ and "triton" in report["versions"]
    md = (tmp_path / "docs" / "r.md").read_text()
    assert md.startswith("# GPU check: NVIDIA Test GPU (capability 9.0")
    assert "| good | **pass** |" in md and "| bad | **fail** |" in md and "- GBps: 1.23e+03" in md
    assert "traceback:\n\n```\nTraceback (most recent call last):" in md


# ------------------------------------------------------------------------------------ GRPO step
def test_grpo_step_times_its_phases_on_a_tiny_model_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPO_OUTPUT_ROOT", str(tmp_path / "outputs"))
    cache = os.environ.get("GRPO_TEST_CACHE", str(tmp_path / "cache"))
    n = gc.grpo_step("tiny-llama", "cpu", max_completion_length=8, cache_dir=cache)
    assert n["peak_memory_mb"] is None and n["time/update"] > 0 and n["time/generate"] > 0
    assert all(math.isfinite(n[k]) for k in ("loss", "grad_norm", "step_s", "completion_length"))
