"""GPU acceptance check: the Triton kernel, its benchmark, the fused LM head, a GRPO step and DDP on CUDA.

Run from the project's venv, offline, on a machine with one NVIDIA GPU (two for the last check):
    .venv/bin/python scripts/gpu_check.py                    # all checks; their budgets add up to 12.7 min
    .venv/bin/python scripts/gpu_check.py --only kernels,lm_head         # rerun some checks
Writes docs/gpu_check.json and docs/gpu_check.md (`--out` prefix): device, capability, versions, and per
check its status (pass / fail / skip), reason, seconds against its budget and measured numbers. Exit
status 0 when no check failed, 1 when one did, 2 (one line `error: no CUDA device: ...`) without CUDA.

Checks, in order, each with a budget in seconds (a subprocess is killed at it; an in-process check
that passes but overruns it fails). Not yet run on a GPU: the budgets are estimates.
 1. kernels (90)        Triton backend, compiled, against the float64 definition: lp and H forward and
                        the logits gradient, fp32/bf16/fp16 logits, V = 123 (T = 1), V = 4099 (top-k −inf
                        padding, temperature 0.7, masked rows holding −inf/NaN and id −100, a strided slice
                        of (B, L, V) as the trainer passes it) and V = 151,936; tolerances tests/conftest.py TOL.
 2. bench_entropy (100) scripts/bench_entropy.py --shapes 4096x151936 --dtype bf16 in a subprocess (it
                        checks every method before timing); ours against one read of the logits at the
                        spec-sheet HBM bandwidth (HBM_PEAK_GBPS) and at a measured device-to-device copy.
 3. lm_head (30)        kernels.lm_head_logprobs_and_entropy with bf16 hidden/weight under
                        torch.autocast("cuda", bfloat16), TF32 on (as the trainer runs): lp, H and both
                        gradients against float64 on the bf16 values upcast, within TOL.
 4. grpo_step (120)     smollm2-135m + LoRA, bf16 autocast, B = 2 × G = 4, 64 new tokens: one warm-up step,
                        then one timed step; seconds per phase from its metrics, peak CUDA memory.
 5. vllm_step (300)     the grpo_step with vLLM sampling (bf16 engine, colocated; grpo.vllm_engine), when vLLM
                        is installed in this Python: engine start, sync and phase seconds, and the logged
                        sampler–trainer log-prob difference. Skipped without vLLM.
 6. ddp (120)           with ≥ 2 GPUs: tests/test_ddp.py (2 ranks under torchrun, NCCL, same update as 1).

Numbers (JSON `checks[i].numbers`): *_err = max |ours − float64|; worst_err_over_tol = max of
|ours − float64| / (atol + rtol·|float64|), ≤ 1 passes; GBps = bytes of logits / median time;
x_read_floor = median time / (bytes / bandwidth), 1.0 = reading the logits once at that bandwidth.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: models come from PyPI packages
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from grpo.config import UserError, cli_main, format_settings, parse_settings, require  # noqa: E402
from grpo.measure import package_versions  # noqa: E402
from grpo.run import atomic_write_json, atomic_write_text, markdown_table  # noqa: E402
from kernels import lm_head_logprobs_and_entropy, token_logprobs_and_entropy  # noqa: E402

_spec = importlib.util.spec_from_file_location("tests_conftest", ROOT / "tests" / "conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
TOL = _conftest.TOL  # the test suite's one tolerance table, keyed by input dtype / ("stored", dtype)

# Spec-sheet peak memory bandwidth, decimal GB/s. First key contained in the device name wins, so the
# more specific names come first ("GH200" before "H200", "A100" before "A10", "L40" before "L4").
HBM_PEAK_GBPS = [("GH200", 4000), ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350),
                 ("B200", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
                 ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("RTX 4090", 1008),
                 ("RTX 3090", 936), ("V100", 900), ("T4", 320)]


@dataclass
class Settings:
    """What to check and where the report goes."""

    out: str = "docs/gpu_check"
    """report prefix: writes <out>.json and <out>.md"""
    only: list[str] = field(default_factory=list)
    """run only these checks (kernels, bench_entropy, lm_head, grpo_step, vllm_step, ddp); empty = all"""

    def validate(self) -> None:
        """Checked before anything runs (grpo.config [D9])."""
        require(self, "only", set(self.only) <= set(CHECKS), f"must name checks among {', '.join(CHECKS)}")


class SkipCheck(Exception):
    """The check cannot run on this machine (the reason says why)."""


class CheckFailed(Exception):
    """The check ran and a result is wrong; `numbers` keeps what was measured."""

    def __init__(self, reason: str, numbers: dict):
        super().__init__(reason)
        self.numbers = numbers


# ------------------------------------------------------------------------- float64 comparisons
def compare(got: torch.Tensor, want: torch.Tensor, tol: dict) -> dict:
    """Max |got − want| and its worst ratio to the bound atol + rtol·|want| (assert_close's rule)."""
    got, want = got.detach().double(), want.detach().double()
    err = (got - want).abs()  # NaN where either is NaN: compares False, so it fails
    bound = tol["atol"] + tol["rtol"] * want.abs()
    ok = got.shape == want.shape and bool((err <= bound).all())
    worst = (err / bound).max().item() if err.numel() else 0.0
    return {"max_err": err.max().item() if err.numel() else 0.0, "worst_err_over_tol": worst, "ok": ok}


def summarise(parts: dict[str, dict]) -> dict:
    """One row from named `compare` results: each one's max error, the worst ratio to TOL, all ok."""
    return {**{f"{k}_err": p["max_err"] for k, p in parts.items()}, "ok": all(p["ok"] for p in parts.values()),
            "worst_err_over_tol": max(p["worst_err_over_tol"] for p in parts.values())}


def reference_logp_entropy(x: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, mask=None):
    """float64 lp(y) = log softmax(x/T)[y] and H = −Σ p log p per row; rows with mask False are 0."""
    keep = torch.ones(ids.shape, dtype=torch.bool, device=x.device) if mask is None else mask
    z = torch.where(keep[..., None], x.double(), 0.0) / temperature  # (..., V) masked rows: finite stand-ins
    logp_all = torch.log_softmax(z, dim=-1)  # (..., V)
    p = logp_all.exp()
    entropy = -(p * torch.where(p > 0, logp_all, 0.0)).sum(-1)  # (...) 0·log 0 := 0 (−inf entries)
    logp = logp_all.gather(-1, torch.where(keep, ids, 0)[..., None]).squeeze(-1)  # (...)
    return torch.where(keep, logp, 0.0), torch.where(keep, entropy, 0.0)


def kernel_case(V: int, dtype: torch.dtype, device: str, seed: int = 0):
    """(leaf (B, L, V), pad, ids, mask, temperature); the op sees leaf[:, pad:L − pad] (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    B, T, pad, temperature = {123: (16, 1, 0, 1.0), 4099: (4, 8, 1, 0.7)}.get(V, (2, 16, 0, 1.0))
    x = torch.randn(B, T + 2 * pad, V, generator=g) * 3  # (B, L, V)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    if V == 4099:
        rows = x[:, pad:T + pad]  # (B, T, V) view
        top = rows.topk(40, dim=-1)
        rows.copy_(torch.full_like(rows, float("-inf")).scatter(-1, top.indices, top.values))
        ids = top.indices.gather(-1, torch.randint(0, 40, (B, T, 1), generator=g)).squeeze(-1)  # (B, T)
        mask = torch.rand(B, T, generator=g) > 0.3
        mask[0, 0], mask[0, 1], mask[1, 2] = True, False, False
        rows[0, 1], rows[1, 2, 5], ids[~mask] = float("-inf"), float("nan"), -100
    return x.to(dtype).to(device), pad, ids.to(device), mask.to(device), temperature


def run_kernel_cases(device: str, *, backend: str = "triton", vocabs=(123, 4099, 151936), fn=None) -> dict:
    """lp, H and the logits gradient of `fn` (kernels.token_logprobs_and_entropy) against float64."""
    fn, rows = fn or token_logprobs_and_entropy, []
    for V in vocabs:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            leaf, pad, ids, mask, temp = kernel_case(V, dtype, device)
            inner = slice(pad, leaf.shape[1] - pad)
            xg = leaf.clone().requires_grad_()
            logp, H = fn(xg[:, inner], ids, temperature=temp, mask=mask, backend=backend)
            a, b = (torch.randn(ids.shape, generator=torch.Generator().manual_seed(k)).to(device) for k in (1, 2))
            ((a * logp).sum() + (b * H).sum()).backward()  # a, b: upstream gradients of lp and H
            x64 = leaf[:, inner].double().requires_grad_()
            ref_logp, ref_H = reference_logp_entropy(x64, ids, temp, mask)
            ((a.double() * ref_logp).sum() + (b.double() * ref_H).sum()).backward()
            want_grad = torch.zeros(leaf.shape, dtype=torch.float64, device=device)  # (B, L, V)
            want_grad[:, inner] = x64.grad  # 0 outside the slice
            row = summarise({"logp": compare(logp, ref_logp, TOL[dtype]), "entropy": compare(H, ref_H, TOL[dtype]),
                             "grad": compare(xg.grad, want_grad, TOL[("stored", dtype)])})
            row["ok"] &= xg.grad.dtype == dtype
            rows.append({"V": V, "dtype": str(dtype).removeprefix("torch."), "rows": ids.numel(), **row})
    numbers = {"backend": backend, "cases": rows}
    bad = [f"V={r['V']} {r['dtype']}" for r in rows if not r["ok"]]
    if bad:
        raise CheckFailed(f"outside TOL against float64: {', '.join(bad)}", numbers)
    return numbers


def compare_lm_head(device: str, *, N=(4, 75), D=576, V=49152, fn=None, seed: int = 0) -> dict:
    """`fn` (the fused LM head) on bf16 h, W under bf16 autocast, TF32 on, against float64 of h·Wᵀ."""
    fn, g = fn or lm_head_logprobs_and_entropy, torch.Generator().manual_seed(seed)
    hidden = torch.randn(*N, D, generator=g).bfloat16().to(device)  # (B, T, D)
    weight = (torch.randn(V, D, generator=g) * 4 / D**0.5).bfloat16().to(device)  # (V, D): logits ~ N(0, 16)
    ids = torch.randint(0, V, N, generator=g).to(device)
    a, b = torch.randn(N, generator=g).to(device), torch.randn(N, generator=g).to(device)  # upstream grads
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, True  # as the trainer
    try:
        with torch.autocast(device, dtype=torch.bfloat16):
            logp, H = fn(h, w, ids)
        ((a * logp).sum() + (b * H).sum()).backward()  # outside autocast, as the trainer does
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref_logp, ref_H = reference_logp_entropy(h64 @ w64.t(), ids)  # (B, T, V) logits in float64
    ((a.double() * ref_logp).sum() + (b.double() * ref_H).sum()).backward()
    tol, stored = TOL[torch.bfloat16], TOL[("stored", torch.bfloat16)]
    parts = {"logp": compare(logp, ref_logp, tol), "entropy": compare(H, ref_H, tol),
             "grad_hidden": compare(h.grad, h64.grad, stored), "grad_weight": compare(w.grad, w64.grad, stored)}
    numbers = {"tokens": ids.numel(), "D": D, "V": V, **summarise(parts)}
    bad = [k for k, p in parts.items() if not p["ok"]]
    if logp.dtype != torch.float32 or h.grad.dtype != torch.bfloat16:
        bad.append(f"dtypes lp {logp.dtype}, grad {h.grad.dtype}")
    if bad:
        raise CheckFailed(f"outside TOL against float64: {', '.join(bad)}", numbers)
    return numbers


# --------------------------------------------------------------------------------- bandwidth
def peak_bandwidth_gbps(device_name: str) -> float | None:
    """Spec-sheet HBM bandwidth of a device by name (HBM_PEAK_GBPS), None when not in the table."""
    return next((gbps for key, gbps in HBM_PEAK_GBPS if key in device_name), None)


def read_floor(nbytes: int, seconds: float, gbps: float) -> dict:
    """Achieved GB/s of reading `nbytes` in `seconds`, and × the time of one read at `gbps`."""
    achieved = nbytes / seconds / 1e9
    return {"GBps": achieved, "x_read_floor": gbps / achieved, "fraction_of_bandwidth": achieved / gbps}


def copy_bandwidth_gbps(nbytes: int = 2**30, repeats: int = 10) -> float:
    """A measured device-to-device copy, (read + write) bytes / seconds: the practical bandwidth."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = src.clone()  # also the warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * nbytes * repeats / (time.perf_counter() - t0) / 1e9


# ------------------------------------------------------------------------------------- checks
def check_bench_entropy() -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:  # bench's default --out would replace the README's CPU table
        cmd = [sys.executable, "scripts/bench_entropy.py", "--shapes", "4096x151936", "--dtype", "bf16",
               "--repeats", "10", "--no-memory", "--out", f"{tmp}/bench"]
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=100)
        if run.returncode:
            raise CheckFailed(f"bench_entropy.py exited {run.returncode}: {run.stderr[-300:]}", {})
        rows = {r["method"]: r for r in csv.DictReader(open(f"{tmp}/bench.csv"))}
    if "ours triton" not in rows:  # the bench times only the methods that pass its correctness check
        raise CheckFailed("bench_entropy.py did not time 'ours triton'", {"stdout": run.stdout[-2000:]})
    ours, name = rows["ours triton"], torch.cuda.get_device_name()
    nbytes, seconds = int(ours["N"]) * int(ours["V"]) * 2, float(ours["median_ms"]) / 1e3  # bf16 logits
    spec, copy = peak_bandwidth_gbps(name), copy_bandwidth_gbps()
    numbers = {"shape": f"{ours['N']}x{ours['V']} bf16", "copy_GBps": copy, "spec_GBps": spec,
               "vs_copy": read_floor(nbytes, seconds, copy),
               "vs_spec": read_floor(nbytes, seconds, spec) if spec else f"{name!r} is not in HBM_PEAK_GBPS",
               "methods": [{k: r[k] for k in ("method", "median_ms", "GBps", "x_floor", "speedup_vs_trl", "err_H")}
                           for r in rows.values()]}
    if "trl" in rows:  # bench's "trl": selective_log_softmax (TRL's Triton kernel on CUDA) + entropy_from_logits
        trl = f"{float(ours['speedup_vs_trl']):.1f}× faster than TRL"
    elif importlib.util.find_spec("trl") is None:
        trl = "TRL part skipped: not installed (BENCH=1 bash scripts/setup_env.sh)"
    else:
        trl = "TRL part skipped: TRL's method failed bench's correctness check"
    return (f"ours {float(ours['GBps']):.0f} GB/s, {numbers['vs_copy']['x_read_floor']:.2f}× the read floor at "
            f"copy speed; {trl}", numbers)


def grpo_step(model: str, device: str, *, max_completion_length: int = 64, cache_dir: str = "",
              use_vllm: bool = False) -> dict:
    """One warm-up and one timed GRPO step (bf16 autocast on CUDA); its phases' seconds and peak memory.
    use_vllm: sample with a colocated vLLM engine (grpo.vllm_engine), its start time and the mismatch logged."""
    from grpo.models import load_model_from_settings
    from grpo.run import seed_everything
    from grpo.settings import GRPOSettings
    from grpo.trainer import GRPOTrainer

    s = GRPOSettings(model=model, device=device, bf16=True, prompts_per_step=2, num_generations=4,
                     max_completion_length=max_completion_length, max_steps=2, model_cache_dir=cache_dir,
                     use_vllm=use_vllm, vllm_gpu_memory_utilization=0.2)
    seed_everything(s.seed)
    t0 = time.perf_counter()
    net, tok = load_model_from_settings(s)
    load_s = time.perf_counter() - t0
    opt, sched = s.make_optimizer([p for p in net.parameters() if p.requires_grad], total_steps=s.max_steps)
    engine, started = None, {}
    if use_vllm:
        from grpo.models import resolve_model_path
        from grpo.vllm_engine import VLLMEngine

        engine = VLLMEngine.start(s, resolve_model_path(model, cache_dir=cache_dir or None), dtype="bfloat16",
                                  seed=s.seed)
        started = {"engine_start_s": engine.start_seconds}
    trainer = GRPOTrainer(s, net, tok, s.load_task(), opt, sched, engine=engine)
    t0 = time.perf_counter()
    trainer.step()  # warm-up: CUDA context, Triton compilation, allocator
    warmup_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    m = trainer.step()
    numbers = {"load_s": load_s, "warmup_step_s": warmup_s, "step_s": time.perf_counter() - t0, **started,
               **{k: m[k] for k in ("time/generate", "time/score", "time/update", "completion_length",
                                    "tokens_per_second", "reward", "loss", "grad_norm", "time/sync_weights",
                                    "sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
                                    "sampling/importance_sampling_ratio/mean") if k in m},
               "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}
    bad = [k for k in ("loss", "grad_norm") if not torch.isfinite(torch.tensor(float(m[k])))]
    if bad:
        raise CheckFailed(f"non-finite {', '.join(bad)}", numbers)
    return numbers


def check_ddp() -> tuple[str, dict]:
    if torch.cuda.device_count() < 2:
        raise SkipCheck(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    if not torch.distributed.is_nccl_available():
        raise CheckFailed("this torch build has no NCCL", {})
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRPO_TEST_CACHE=tmp, GRPO_TEST_DEVICE="cuda")  # ranks on cuda:LOCAL_RANK, NCCL
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ddp.py"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    numbers = {"pytest_tail": run.stdout.strip().splitlines()[-1:] if run.stdout.strip() else []}
    if run.returncode:
        raise CheckFailed(f"tests/test_ddp.py failed: {run.stdout[-600:]}", numbers)
    return "2 ranks (NCCL) make the same update as 1 rank (dapo and grpo in float64, dapo in float32)", numbers


def check_grpo_step() -> tuple[str, dict]:
    n = grpo_step("smollm2-135m", "cuda")
    return f"one step in {n['step_s']:.1f} s, peak {n['peak_memory_mb']:.0f} MiB, finite loss and grad norm", n


def check_vllm_step() -> tuple[str, dict]:
    from grpo.vllm_engine import vllm_installed

    if not vllm_installed():
        raise SkipCheck(f"vLLM is not installed in {sys.executable} (README, vLLM: the CUDA wheel's venv)")
    n = grpo_step("smollm2-135m", "cuda", use_vllm=True)
    return (f"one step through vLLM in {n['step_s']:.1f} s (engine start {n['engine_start_s']:.0f} s), "
            f"mean |lp_trainer − lp_vllm| {n['sampling/sampling_logp_difference/mean']:.2g}"), n


CHECKS = {  # name: (check, budget in seconds); a check returns (reason, numbers) when it passes
    "kernels": (lambda: ("Triton lp, H and gradient within TOL on every case", run_kernel_cases("cuda")), 90),
    "bench_entropy": (check_bench_entropy, 100),
    "lm_head": (lambda: ("fused LM head within TOL under bf16 autocast", compare_lm_head("cuda")), 30),
    "grpo_step": (check_grpo_step, 120), "vllm_step": (check_vllm_step, 300), "ddp": (check_ddp, 120)}


# ------------------------------------------------------------------------------- run and report
def run_check(name: str, fn, budget_s: float) -> dict:
    """Run one check; a skip, a wrong result or any exception becomes its status and reason."""
    t0, numbers = time.perf_counter(), {}
    try:
        reason, numbers = fn()
        status = "pass"
    except SkipCheck as e:
        status, reason = "skip", str(e)
    except CheckFailed as e:
        status, reason, numbers = "fail", str(e), e.numbers
    except Exception as e:  # noqa: BLE001 — a crash is a failed check, reported with where it happened
        status, reason = "fail", f"{type(e).__name__}: {e}".splitlines()[0][:500]
        numbers = {"traceback": traceback.format_exc()[-3000:]}
    seconds = time.perf_counter() - t0
    if status == "pass" and seconds > budget_s:
        status, reason = "fail", f"over its time budget ({seconds:.0f} s > {budget_s} s); {reason}"
    return {"name": name, "status": status, "reason": reason, "seconds": seconds, "budget_s": budget_s,
            "numbers": numbers}


def report_markdown(report: dict) -> str:
    """The report as Markdown: device and versions, a table of the checks, then each check's numbers."""
    d, cell = report["device"], lambda v: f"{v:.3g}" if isinstance(v, float) else str(v).replace("|", "/")
    text = (f"# GPU check: {d['name']} (capability {d['capability']}, {d['memory_gb']:.0f} GB), {d['count']} "
            f"GPU(s)\n\n`{report['command']}` · {report['total_seconds']:.0f} s · "
            + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "\n\n")
    checks = [{**c, "reason": " ".join(cell(c["reason"]).split())} for c in report["checks"]]
    text += markdown_table("## Checks", checks, [("name", "{}"), ("status", "**{}**"), ("seconds", "{:.1f}"),
                                                 ("budget_s", "{}"), ("reason", "{}")])
    for c in report["checks"]:
        text += f"\n## {c['name']}\n\n"
        for key, value in c["numbers"].items():
            if isinstance(value, list) and value and isinstance(value[0], dict):  # cases, methods: a table
                text += "\n" + markdown_table(f"{key}:", [{k: cell(v) for k, v in r.items()} for r in value],
                                              [(k, "{}") for k in value[0]]) + "\n"
            elif isinstance(value, str) and "\n" in value:  # a traceback, a subprocess's output
                text += f"\n{key}:\n\n```\n{value.strip()}\n```\n"
            else:
                shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else cell(value)
                text += f"- {key}: {shown}\n"
    return text


def main() -> None:
    s = parse_settings(Settings, description=__doc__, print_config=False)
    if not torch.cuda.is_available():
        raise UserError(f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) "
                        "sees none; run this on a machine with an NVIDIA GPU and a CUDA build of torch")
    print(format_settings(s), file=sys.stderr)
    props, t0, checks = torch.cuda.get_device_properties(0), time.perf_counter(), []
    for name, (fn, budget) in ((n, c) for n, c in CHECKS.items() if not s.only or n in s.only):
        print(f"check {name} (budget {budget} s) ...", file=sys.stderr, flush=True)
        checks.append(run_check(name, fn, budget))
        print(f"  {checks[-1]['status']}: {checks[-1]['reason']}", file=sys.stderr, flush=True)
        with contextlib.suppress(RuntimeError):  # after a CUDA error the context may be unusable
            torch.cuda.empty_cache()
    report = {"device": {"name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_gb": props.total_memory / 1e9, "count": torch.cuda.device_count()},
              "versions": {**package_versions(("torch", "triton", "transformers", "peft", "trl")),
                           "cuda": torch.version.cuda},
              "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
              "total_seconds": time.perf_counter() - t0, "checks": checks}
    json_path = atomic_write_json(Path(s.out).with_suffix(".json"), report)
    md_path = atomic_write_text(Path(s.out).with_suffix(".md"), report_markdown(report))
    print("\n".join(f"{c['status']:>4}  {c['name']:<13} {c['seconds']:6.1f} s  {c['reason']}" for c in checks))
    print(f"wrote {json_path} and {md_path}")
    sys.exit(1 if any(c["status"] == "fail" for c in checks) else 0)


if __name__ == "__main__":
    cli_main(main)
