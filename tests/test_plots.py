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
