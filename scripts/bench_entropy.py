"""Benchmark: per-token log-prob + entropy from existing logits, ours against naive PyTorch and peers.

Run (the README's CPU table is the first command):
    python scripts/bench_entropy.py --quick                 # N=2048, V=49152, fp32
    python scripts/bench_entropy.py                         # N ∈ {1k, 4k, 16k} × V ∈ {32k, 49152, 151936}
    python scripts/bench_entropy.py --shapes 1024x32768,4096x151936 --dtype bf16 --repeats 7

Steps, per shape:
 1. Build seeded logits (N, V) ~ 3·N(0, 1) and sampled ids; everything runs under torch.no_grad().
 2. Correctness first: every method's logp and H on the first 256 rows against the float64
    definition; a method off by more than 1e-4 is reported as FAIL and not timed.
 3. Time all methods interleaved (one call of each per round, after warm-up/compile), `repeats`
    rounds, so that load from other processes hits every method alike. Median and p10–p90.
 4. Peak extra memory: each method once more in a fresh subprocess. On CPU: Linux peak RSS (VmHWM)
    reset through /proc/self/clear_refs after warm-up, minus the RSS before the call, with glibc told
    to return every block ≥ 64 KiB to the OS on free (MALLOC_MMAP_THRESHOLD_) so that freed buffers
    are not counted in the baseline. On CUDA: torch.cuda.max_memory_allocated above the baseline.
 5. Markdown table on stdout; CSV (+ versions and this exact command per row) and PNG under docs/.

Methods: `floor` = logits.amax(-1), one read of the logits (the memory-read floor); `naive` =
log_softmax → gather, −Σ exp(lp)·lp; `naive+compile` = torch.compile of it; `trl` = TRL's
selective_log_softmax + entropy_from_logits (its CPU path; on CUDA TRL dispatches to its own Triton
kernel); `ours cpu` = kernels backend "cpu" (compiled one pass), `ours cpu-eager` = the same with
compile off; `ours triton` (CUDA only).

Glossary: median_ms · min_ms (least disturbed round) · p10_ms/p90_ms (spread over rounds) · GBps = N·V·bytes / median ·
x_floor = median / floor median · speedup_vs_naive, speedup_vs_trl = their median / ours ·
peak_extra_MB and extra_pct (of the logits' size) · err_logp / err_H = max |ours − float64|.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.measure import cpu_name, package_versions, proc_status_mb, reset_peak_rss  # noqa: E402
from kernels import entropy_cpu, token_logprobs_and_entropy  # noqa: E402

GRID = [(n, v) for n in (1024, 4096, 16384) for v in (32768, 49152, 151936)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class Settings:
    quick: bool = False
    """run only N=2048, V=49152 (the README table)"""
    shapes: str = ""
    """comma-separated NxV list overriding the grid, e.g. 1024x32768,4096x151936"""
    dtype: str = "fp32"
    """logits dtype: fp32, bf16 or fp16"""
    repeats: int = 15
    """timed rounds per shape (after one warm-up round)"""
    memory: bool = True
    """measure peak extra memory in subprocesses (slow for big shapes)"""
    out: str = "docs/bench_entropy"
    """output prefix: writes <out>.csv and <out>.png"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """device of the logits"""


# ------------------------------------------------------------------------------------- methods
def naive(logits, ids):
    lp = logits.float().log_softmax(-1)  # (N, V)
    return lp.gather(-1, ids[:, None]).squeeze(-1), -(lp.exp() * lp).sum(-1)


def trl_fn():
    try:
        from trl.trainer import utils as trl_utils
    except Exception:  # noqa: BLE001 — any import problem means "peer not available"
        return None
    return lambda logits, ids: (trl_utils.selective_log_softmax(logits, ids), trl_utils.entropy_from_logits(logits))


def ours_eager(logits, ids):
    compile_was = entropy_cpu.COMPILE
    entropy_cpu.COMPILE = False
    try:
        return token_logprobs_and_entropy(logits, ids, backend="cpu")
    finally:
        entropy_cpu.COMPILE = compile_was


def methods(device: str) -> dict:
    out = {"floor": lambda logits, ids: (logits.amax(-1), None), "naive": naive,
           "naive+compile": torch.compile(naive, dynamic=False)}
    if trl_fn() is not None:
        out["trl"] = trl_fn()
    if device == "cpu":
        out["ours cpu"] = lambda logits, ids: token_logprobs_and_entropy(logits, ids, backend="cpu")
        out["ours cpu-eager"] = ours_eager
    else:
        out["ours triton"] = lambda logits, ids: token_logprobs_and_entropy(logits, ids, backend="triton")
    return out


def make_inputs(N, V, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(N, V, generator=g) * 3).to(dtype).to(device)
    return logits, torch.randint(0, V, (N,), generator=g).to(device)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- steps
def max_errors(fn, logits, ids):
    """Step 2: max |error| of logp and H on the first 256 rows against the float64 definition."""
    x, y = logits[:256], ids[:256]
    lp_all = torch.log_softmax(x.double(), -1)  # (n, V)
    ref_lp, ref_h = lp_all.gather(-1, y[:, None]).squeeze(-1), -(lp_all.exp() * lp_all).sum(-1)
    lp, h = fn(x, y)
    return (lp.double() - ref_lp).abs().max().item(), (h.double() - ref_h).abs().max().item()


def time_interleaved(fns: dict, logits, ids, repeats, device) -> dict:
    """Step 3: one call of every method per round; returns seconds per method."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn(logits, ids)
            sync(device)
            if round_:  # round 0 is the warm-up (and compile)
                times[name].append(time.perf_counter() - t0)
    return times


def measure_memory_child(name, N, V, dtype, device) -> int:
    """Step 4, inside the subprocess: peak bytes above the pre-call baseline for one call."""
    fn = methods(device)[name]
    logits, ids = make_inputs(N, V, DTYPES[dtype], device)
    with torch.no_grad():
        fn(logits, ids)  # warm-up / compile
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(logits, ids)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        if not reset_peak_rss():  # VmHWM := the current RSS
            raise RuntimeError("cannot reset VmHWM through /proc/self/clear_refs")
        base = proc_status_mb("VmRSS")
        fn(logits, ids)
        return round((proc_status_mb("VmHWM") - base) * 2**20)


def measure_memory(name, N, V, dtype, device) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, __file__, "--_memory-child", json.dumps([name, N, V, dtype, device])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        print(f"  memory of {name}: child failed: {out.stderr[-500:]}", file=sys.stderr)
        return float("nan")
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def fits_in_ram(name, N, V, itemsize) -> bool:
    """Skip methods whose (N, V) temporaries would not fit: naive needs ~3 fp32 copies of the logits."""
    if not Path("/proc/meminfo").exists():
        return True
    avail = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024
    copies = 4 if name.startswith("naive") or name == "trl" else 0.2
    return N * V * (itemsize + 4 * copies) < 0.8 * avail


# ----------------------------------------------------------------------------------------- main
def run_shape(cfg: Settings, N: int, V: int, command: str) -> list[dict]:
    dtype = DTYPES[cfg.dtype]
    logits, ids = make_inputs(N, V, dtype, cfg.device)
    nbytes = logits.numel() * logits.element_size()
    fns, rows, errors = {}, [], {}
    with torch.no_grad():
        for name, fn in methods(cfg.device).items():
            if cfg.device == "cpu" and not fits_in_ram(name, N, V, logits.element_size()):
                print(f"  {name}: skipped at {N}x{V} (would not fit in RAM)")
                continue
            err = (0.0, 0.0) if name == "floor" else max_errors(fn, logits, ids)
            errors[name] = err
            if max(err) > 1e-4:
                print(f"  {name}: FAIL correctness (err logp {err[0]:.2e}, H {err[1]:.2e}); not timed")
                continue
            fns[name] = fn
        load_before = os.getloadavg()[0]
        times = time_interleaved(fns, logits, ids, cfg.repeats, cfg.device)
    load = (load_before, os.getloadavg()[0])  # other processes on the machine: reported with the results
    del logits
    med = {k: statistics.median(v) for k, v in times.items()}
    versions = {"torch": torch.__version__, "trl": package_versions(("trl",))["trl"], "threads": torch.get_num_threads(),
                "loadavg_1min_before_after": load, "cpus": os.cpu_count(),
                "device": torch.cuda.get_device_name() if cfg.device == "cuda" else cpu_name()}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) >= 2 else [ts[0]] * 9
        mem = measure_memory(name, N, V, cfg.dtype, cfg.device) if cfg.memory and name != "floor" else float("nan")
        rows.append(dict(N=N, V=V, dtype=cfg.dtype, method=name, median_ms=1e3 * med[name], min_ms=1e3 * min(ts),
                         p10_ms=1e3 * q[0],
                         p90_ms=1e3 * q[-1], GBps=nbytes / med[name] / 1e9, x_floor=med[name] / med["floor"],
                         speedup_vs_naive=med.get("naive", float("nan")) / med[name],
                         speedup_vs_trl=med.get("trl", float("nan")) / med[name], peak_extra_MB=mem,
                         extra_pct=100 * mem * 2**20 / nbytes, err_logp=errors[name][0], err_H=errors[name][1],
                         versions=json.dumps(versions), command=command))
    return rows


def markdown(rows) -> str:
    head = ("| N × V | method | median ms (p10–p90) | min ms | GB/s | × floor | vs naive | vs TRL "
            "| peak extra MB (% logits) | max err lp / H |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['N']}×{r['V']} | {r['method']} | {r['median_ms']:.1f} ({r['p10_ms']:.1f}–{r['p90_ms']:.1f}) "
                     f"| {r['min_ms']:.1f} | {r['GBps']:.1f} | {r['x_floor']:.2f} | {r['speedup_vs_naive']:.1f}× | {r['speedup_vs_trl']:.1f}× "
                     f"| {r['peak_extra_MB']:.1f} ({r['extra_pct']:.1f} %) | {r['err_logp']:.1e} / {r['err_H']:.1e} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = sorted({(r["N"], r["V"]) for r in rows})
    names = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes) + 3), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j, s in enumerate(shapes) for r in rows if (r["N"], r["V"]) == s and r["method"] == name]
        ys = [r["median_ms"] for s in shapes for r in rows if (r["N"], r["V"]) == s and r["method"] == name]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], [f"{n}×{v}" for n, v in shapes])
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_title(f"logp + entropy, {rows[0]['dtype']}, {json.loads(rows[0]['versions'])['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse() -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Settings):
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    args = p.parse_args()
    if args.dtype not in DTYPES:
        p.error(f"--dtype must be one of {list(DTYPES)}")
    return Settings(**vars(args))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--_memory-child":
        print(measure_memory_child(*json.loads(sys.argv[2])))
        return
    cfg = parse()
    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    print("settings:", json.dumps(dataclasses.asdict(cfg)))
    shapes = [(2048, 49152)] if cfg.quick else GRID
    if cfg.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in cfg.shapes.split(",")]
    rows = []
    for N, V in shapes:
        print(f"shape {N}x{V} ({cfg.dtype}, {cfg.device}) ...", flush=True)
        rows += run_shape(cfg, N, V, command)
    print(markdown(rows))
    print("versions and load:", rows[0]["versions"])
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
