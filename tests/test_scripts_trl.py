"""scripts/compare_trl.py (and through it scripts/bench_grpo_step.py) end to end on the tiny Llama.

One subprocess run, 3 steps per framework: exit code 0, both frameworks trained on the same prompts with the
same initial weights (the script stops otherwise), finite timings/memory/rewards, and every output written.
Skipped when TRL (the optional `bench` extra) is not installed.
"""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed (optional extra: pip install -e .[bench])")

from grpo.models import named_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_compare_trl_runs_both_trainers_on_the_same_prompts_and_writes_table_and_plot(tmp_path):
    cache = tmp_path / "models"
    named_model_path("tiny-llama", cache_dir=cache)  # built once here, not by two workers at the same time
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "scripts" / "compare_trl.py"), "--model", "tiny-llama",
           "--model-cache-dir", str(cache), "--max-steps", "3", "--window", "2", "--num-generations", "4",
           "--max-completion-length", "12", "--micro-batch-size", "4", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for suffix in (".md", ".csv", ".json", ".png"):
        assert out.with_suffix(suffix).stat().st_size > 0, suffix
    rows = {r["framework"]: r for r in csv.DictReader(open(out.with_suffix(".csv")))}
    assert set(rows) == {"ours", "trl"}
    for r in rows.values():
        for key in ("s_step", "tokens_s", "peak_rss_mb", "reward_last5"):
            assert math.isfinite(float(r[key])) and float(r[key]) >= 0, (key, r)
        assert "trl" in json.loads(r["versions"]) and "compare_trl.py" in r["command"]
    records = json.loads(out.with_suffix(".json").read_text())["records"]
    assert sorted((r["framework"], r["step"]) for r in records) == [(f, s) for f in ("ours", "trl") for s in (1, 2, 3)]
    by_step = {}
    for r in records:
        by_step.setdefault(r["step"], set()).add(r["prompts"])
    assert all(len(digests) == 1 for digests in by_step.values())  # the same prompts at every step
    assert "ours ÷ TRL" in out.with_suffix(".md").read_text()


def test_compare_trl_evaluates_both_frameworks_on_held_out_rows_at_equal_steps(tmp_path):
    cache = tmp_path / "models"
    named_model_path("tiny-llama", cache_dir=cache)
    out = tmp_path / "acc"
    cmd = [sys.executable, str(ROOT / "scripts" / "compare_trl.py"), "--model", "tiny-llama",
           "--model-cache-dir", str(cache), "--max-steps", "3", "--window", "2", "--num-generations", "4",
           "--max-completion-length", "8", "--micro-batch-size", "4", "--learning-rate", "1e-2",
           "--task", "drill", "--reward-funcs", "grpo_helpers:vowel_fraction",  # a reward tiny-llama moves
           "--eval-steps", "2", "--eval-num-examples", "6", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"})
    assert done.returncode == 0, done.stderr[-3000:]
    curves = json.loads(out.with_suffix(".json").read_text())["held_out"]
    assert {n: [p["step"] for p in c] for n, c in curves.items()} == {"ours": [0, 2, 3], "trl": [0, 2, 3]}
    assert curves["ours"][0] == curves["trl"][0]  # one evaluation of the base model
    assert all(p["summary"]["num_examples"] == 6 for c in curves.values() for p in c)
    values = {p["value"] for c in curves.values() for p in c}
    assert len(values) > 1  # the saved adapters are the trained ones, not the base
    rows = {r["framework"]: r for r in csv.DictReader(open(out.with_suffix(".csv")))}
    assert all(math.isfinite(float(r["heldout_after"])) for r in rows.values())
    assert "held-out grpo_helpers:vowel_fraction/rate after 3 steps" in out.with_suffix(".md").read_text()
    assert out.with_name("acc_heldout.png").stat().st_size > 1000
