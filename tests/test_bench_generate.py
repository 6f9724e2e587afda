"""scripts/bench_generate.py (issue #17): runs end to end on tiny-llama, checks every variant's distribution
before timing, and writes the floor and each variant's ratio to it; its check and floor, unit by unit."""
import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo.config import ConfigError, UserError, parse_settings

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_bench_generate", ROOT / "scripts" / "bench_generate.py")
bg = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # registered: dataclass hints resolve
_spec.loader.exec_module(bg)


def test_bench_generate_checks_times_every_variant_and_writes_the_floor(tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "scripts/bench_generate.py", "--model", "tiny-llama", "--shapes", "1x2x8", "--repeats", "1",
           "--warmup", "0", "--threads", "1", "--bandwidth-mb", "64", "--matmul-size", "256", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    expected = {"ours", "ours_hf_modules", "ours_torch_mm", "ours_multinomial", "ours_dynamic_cache", "ours_generate", "ours_bf16", "hf_generate"} | (
        {"trl"} if importlib.util.find_spec("trl") else set())
    assert {r["variant"] for r in report["results"]} == expected
    for r in report["results"]:
        assert r["shape"] == "1x2x8" and math.isfinite(r["ms_step"]) and r["ms_min"] <= r["ms_step"] <= r["ms_max"]
        assert r["x_floor"] > 0 and math.isfinite(r["x_floor"]) and r["tokens_s"] > 0 and r["peak_mb"] > 0
        assert 0 <= r["logp_gap_mean"] <= r["logp_gap_max"]
        if r["variant"] == "ours_bf16":  # another distribution: its gap is measured, not held to 1e-4
            assert 1e-5 < r["logp_gap_max"] < 5e-2, r
        else:
            assert r["logp_gap_max"] <= 1e-4  # the distribution check ran and passed
    assert "ours_bf16: ANOTHER DISTRIBUTION" in run.stdout and "| logp_gap_max | logp_gap_mean |" in run.stdout
    floor = report["floors"]["1x2x8"]
    assert floor["N"] == 2 and floor["bytes"] > 0 and floor["flops"] > 0 and floor["floor_ms"] > 0
    assert floor["floor_ms"] == max(floor["ms_memory"], floor["ms_compute"])
    assert floor["ms_linears"] > 0 and floor["ms_linears_torch"] > 0 and floor["ms_linears_bf16"] > 0  # step 1b
    for r in report["results"]:
        key = {"ours_bf16": "ms_linears_bf16", "ours_torch_mm": "ms_linears_torch"}.get(r["variant"], "ms_linears")
        assert r["linears_ms"] == floor[key] and r["x_linears"] == pytest.approx(r["ms_step"] / r["linears_ms"])
    machine = report["machine"]
    assert machine["few_rows_kernel"] == (bg.few_rows_unavailable() or "used")
    assert machine["threads"] == 1 and all(machine[k] > 0 for k in ("bandwidth_GBps", "gflops_fp32", "gflops_bf16"))
    assert "bench_generate.py" in report["command"] and report["versions"]["torch"]
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert {r["variant"] for r in rows} == expected and all(float(r["x_floor"]) > 0 for r in rows)
    assert out.with_suffix(".png").stat().st_size > 0 and "| variant |" in run.stdout


@pytest.mark.parametrize("dtype,kernel", [("float32", "auto"), ("float32", "torch"), ("bfloat16", "auto")])
def test_time_linears_runs_every_linear_layer_once_as_the_decoding_loop_does(monkeypatch, few_rows_calls, dtype,
                                                                            kernel):
    from grpo.models import ModelSettings, load_model_from_settings

    model, _ = load_model_from_settings(ModelSettings(model="tiny-llama", use_lora=True, lora_r=4, lora_alpha=8,
                                                      lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"]))
    seen = []
    monkeypatch.setattr(bg, "_median_seconds", lambda fn, repeats: seen.append(fn()) or 0.002)
    assert bg.time_linears(model, N=3, dtype=dtype, kernel=kernel) == pytest.approx(2.0)
    c = model.config
    outs = seen[0]
    assert len(outs) == 7 * c.num_hidden_layers + 1  # q k v o gate up down per layer, and the LM head
    assert outs[-1].shape == (3, 1, c.vocab_size) and all(o.shape[:2] == (3, 1) for o in outs)
    assert all(o.dtype == torch.float32 for o in outs)  # bf16 copies inside, the output cast back [G9]
    kernel_runs = dtype == "float32" and kernel == "auto" and bg.few_rows_unavailable() is None
    assert len(few_rows_calls) == (len(outs) if kernel_runs else 0)  # fp32 "auto": every layer by kernels.few_rows [G8]


def test_check_distribution_stops_a_variant_whose_logprobs_are_off_by_1e_2():
    g = torch.Generator().manual_seed(0)
    ref = -torch.rand(4, 6, generator=g) * 5  # [N, T] log-probs of a forward pass
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 3:] = False  # a completion that ended early
    assert bg.check_distribution("ok", ref + 1e-6, ref, mask, tol=1e-4) == pytest.approx(1e-6, abs=1e-7)
    with pytest.raises(UserError, match="variant off .* up to 0.01"):
        bg.check_distribution("off", ref + 1e-2 * mask, ref, mask, tol=1e-4)
    nan = ref.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(UserError, match="variant nan"):
        bg.check_distribution("nan", nan, ref, mask, tol=1e-4)


def test_only_a_variant_of_another_distribution_is_spared_the_check(monkeypatch):
    """checked_sample holds every variant to LP_TOL but those in DIFFERENT_DISTRIBUTION, whose gap it reports."""
    ids, mask = torch.tensor([[5, 6]]), torch.tensor([[True, True]])
    recorded = torch.tensor([[-1.0, -2.0]])  # [N, T]
    sample = bg.Sample(ids, mask, recorded)
    monkeypatch.setattr(bg, "VARIANTS", {n: lambda *a, **k: sample for n in ("ours", "ours_bf16")})
    import grpo.policy
    from grpo.rollout import Sampling

    forward = torch.tensor([[-1.01, -2.03]])  # 0.01 and 0.03 nats away
    monkeypatch.setattr(grpo.policy, "completion_logprobs", lambda *a, **k: (forward, None))
    model = torch.nn.Linear(1, 1)  # only its parameters' dtype is read
    kw = dict(G=1, sampling=Sampling(), seed=0)
    _, gap_max, gap_mean = bg.checked_sample("ours_bf16", model, None, ids, mask, **kw)
    assert gap_max == pytest.approx(0.03) and gap_mean == pytest.approx(0.02)
    with pytest.raises(UserError, match="variant ours does not sample"):
        bg.checked_sample("ours", model, None, ids, mask, **kw)


def test_check_distribution_ignores_padding_after_the_end():
    ref = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert bg.check_distribution("padded", ref + 5.0 * ~mask, ref, mask, tol=1e-4) == 0.0


def test_variants_paired_in_same_tokens_must_draw_the_same_tokens():
    ids = torch.tensor([[5, 6, 2], [7, 2, 0]])
    mask = ids != 0
    same, other = bg.Sample(ids, mask, None), bg.Sample(ids.flip(0), mask.flip(0), None)
    bg.check_same_tokens({"a": same, "b": bg.Sample(ids.clone(), mask, None)}, [("a", "b")])
    bg.check_same_tokens({"a": same, "c": other}, [("a", "b")])  # b did not run: nothing to compare
    with pytest.raises(UserError, match="variants a and c sampled different tokens"):
        bg.check_same_tokens({"a": same, "c": other}, [("a", "c")])
    with pytest.raises(UserError, match="variants a and d"):
        bg.check_same_tokens({"a": same, "d": bg.Sample(ids[:, :2], mask[:, :2], None)}, [("a", "d")])


def test_floor_is_the_larger_of_memory_and_compute_time_worked_by_hand():
    dims = {"weights_read": 1000, "hidden": 10, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 5,
            "bytes_per_param": 4}
    machine = {"bandwidth_GBps": 1e-6, "gflops_fp32": 1e-6, "gflops_bf16": 4e-6}  # 1000 B/s, 1000 FLOP/s, 4000
    f = bg.step_floor(dims, machine, N=3, context=10)
    # bytes = 4·1000 weights + 4·3·10 embedding rows + 2·2·2·5·10·3·4 KV = 4000 + 120 + 4800 = 8920
    assert f["bytes"] == 8920 and f["bytes_kv"] == 4800
    # FLOPs = 2·3·1000 + 4·2·4·5·10·3 = 6000 + 4800 = 10800
    assert f["flops"] == 10800
    # 8920 B / 1000 B/s = 8.92 s, 10800 / 1000 FLOP/s = 10.8 s → compute bound, 10800 ms
    assert f["floor_ms"] == pytest.approx(10800) and f["bound"] == "compute"
    # bf16: bytes 2000 + 60 + 2400 = 4460 → 4.46 s; 10800 / 4000 = 2.7 s → memory bound, 4460 ms
    assert f["floor_ms_bf16"] == pytest.approx(4460) and f["bound_bf16"] == "memory"


@pytest.mark.parametrize("args, fragment", [
    (["--variants", "nope"], "variants = ['nope']"),
    (["--shapes", "2x4"], "shapes = ['2x4']"),
    (["--shapes", "2x0x64"], "shapes"),
    (["--repeats", "0"], "repeats = 0"),
    (["--dtype", "bf16"], "dtype = 'bf16'"),
    (["--device", "cuda"], "device"),
])
def test_bad_settings_stop_before_anything_loads(args, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_settings(bg.BenchSettings, args, print_config=False)
