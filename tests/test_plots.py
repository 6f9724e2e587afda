"""grpo/plots.py: curves from metrics files, several runs in one PNG, written atomically."""
from grpo.plots import metric_points, plot_curves, plot_reward_curve
from grpo.run import MetricsWriter

PNG = b"\x89PNG\r\n\x1a\n"


def test_metric_points_skip_lines_without_the_key(tmp_path):
    with MetricsWriter(tmp_path / "m.jsonl") as w:
        w.log(1, {"reward": 0.5})
        w.log(2, {"loss": 1.0})
        w.log(3, {"reward": 1.5})
    assert metric_points(tmp_path / "m.jsonl", "reward") == [(1, 0.5), (3, 1.5)]


def test_two_runs_in_one_png_and_no_temporary_file_left(tmp_path):
    out = plot_curves({"seed 0": [(1, 0.1), (2, 0.4), (3, 0.9)], "seed 1": [(1, 0.2), (2, 0.3)], "empty": []},
                      tmp_path / "curves.png", title="t", smooth=2)
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_reward_curve_of_a_run(tmp_path):
    with MetricsWriter(tmp_path / "m.jsonl") as w:
        for step in range(1, 6):
            w.log(step, {"reward": step / 5, "score": -step})
    out = plot_reward_curve(tmp_path / "m.jsonl", tmp_path / "r.png", keys=("score",))
    assert out.read_bytes().startswith(PNG)


def _plot_runs(tmp_path, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GRPO_OUTPUT_ROOT": str(tmp_path / "outputs")}
    return subprocess.run([sys.executable, str(root / "scripts" / "plot_runs.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_plot_runs_script_overlays_runs_by_name_folder_or_file(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        (tmp_path / "outputs" / name).mkdir(parents=True)
        with MetricsWriter(tmp_path / "outputs" / name / "metrics.jsonl") as w:
            for step in range(1, 7):
                w.log(step, {"reward": scale * step})
    p = _plot_runs(tmp_path, "a", tmp_path / "outputs" / "b" / "metrics.jsonl", "--smooth", 2,
                   "--out", tmp_path / "ab.png")
    assert p.returncode == 0, p.stderr
    assert "a: 6 steps, reward first 2 1.500 -> last 2 5.500" in p.stdout
    assert "b: 6 steps, reward first 2 3.000 -> last 2 11.000" in p.stdout
    assert (tmp_path / "ab.png").read_bytes().startswith(PNG)
    bad = _plot_runs(tmp_path, "a", "missing", "--out", tmp_path / "x.png")
    assert bad.returncode == 2 and "run 'missing': no metrics.jsonl" in bad.stderr and "Traceback" not in bad.stderr
    bad = _plot_runs(tmp_path, "a", "--metric", "kl", "--out", tmp_path / "x.png")
    assert bad.returncode == 2 and "no run logged 'kl'" in bad.stderr


def test_plot_runs_summary_gives_each_seeds_held_out_before_and_after(tmp_path):
    import json

    for name, seed, rates in (("s0", 0, [0.2, 0.5, 0.7]), ("s1", 1, [0.2, 0.4, 0.6])):
        run = tmp_path / "outputs" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"seed": seed}))
        with MetricsWriter(run / "eval.jsonl") as w:
            for step, rate in zip((0, 10, 20), rates):
                w.log(step, {"acc/rate": rate, "acc/rate_stderr": 0.01 * step, "num_examples": 222})
    p = _plot_runs(tmp_path, tmp_path / "outputs" / "s0" / "eval.jsonl", tmp_path / "outputs" / "s1" / "eval.jsonl",
                   "--metric", "acc/rate", "--smooth", 1, "--out", tmp_path / "acc.png", "--summary", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    runs = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert [(r["run"], r["seed"], r["before"], r["after"], r["n_eval"], r["stderr_after"]) for r in runs] == \
        [("s0", 0, 0.2, 0.7, 222, 0.2), ("s1", 1, 0.2, 0.6, 222, 0.2)]
    assert runs[1]["curve"] == [[0, 0.2], [10, 0.4], [20, 0.6]]
