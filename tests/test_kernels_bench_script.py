"""scripts/bench_entropy.py runs end to end on a tiny shape and writes its CSV and PNG."""
import csv
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_entropy_script_checks_correctness_times_and_writes_csv_and_png(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "scripts/bench_entropy.py", "--shapes", "64x1000", "--repeats", "2", "--no-memory",
           "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    methods = {r["method"] for r in rows}
    assert {"floor", "naive", "ours cpu", "ours cpu-eager"} <= methods
    for r in rows:
        assert math.isfinite(float(r["median_ms"])) and float(r["err_H"]) < 1e-4 and "bench_entropy.py" in r["command"]
    assert out.with_suffix(".png").stat().st_size > 0 and "| N × V |" in run.stdout
