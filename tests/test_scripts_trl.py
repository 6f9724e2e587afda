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
