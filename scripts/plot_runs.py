"""Plot one metric of several runs in one PNG: seeds of a recipe, or two configurations side by side.

    python scripts/plot_runs.py recipe_score_model recipe_score_model_seed1 --out docs/recipe_score_model.png
    python scripts/plot_runs.py outputs/grpo/metrics.jsonl outputs/grpo_seed1 --metric completion_length
    python scripts/plot_runs.py outputs/grpo/eval.jsonl outputs/recipe_drill_seed1/eval.jsonl --smooth 1 \
        --metric numeric_correctness/rate --out docs/recipe_drill.png --summary docs/recipe_accuracy.json

Each run is a run name under outputs/, a run folder, or a metrics file (metrics.jsonl, or a run's held-out
eval.jsonl); its label is the run's folder name unless `--labels` gives them. Points are the logged values,
lines their running mean over `--smooth` steps (grpo.plots.plot_curves). `--summary FILE` also writes, per
run, its `seed` (from the run's config.json), the metric's first and last values as `before` and `after`
(with `<metric>_stderr` when logged) and `n_eval` (the evaluation's `num_examples`, when logged).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, at_least, cli_main, parse_settings, path_name  # noqa: E402
from grpo.plots import metric_points, plot_curves  # noqa: E402
from grpo.run import atomic_write_json, output_root, read_metrics  # noqa: E402


@dataclass
class PlotSettings:
    runs: list[str] = field(default_factory=list)
    """run names under outputs/, run folders or metrics.jsonl files (also accepted as positional arguments)"""
    labels: list[str] = field(default_factory=list)
    """one legend label per run; empty = the run folders' names"""
    metric: str = "reward"
    """the metrics.jsonl key to plot"""
    smooth: int = 5
    """steps in the running mean"""
    title: str = ""
    """plot title"""
    out: str = "runs.png"
    """the PNG to write (atomically)"""
    summary: str = ""
    """also write a JSON summary per run: seed, before, after, n_eval (module docstring); '' = none"""

    def validate(self) -> None:
        """Ranges, checked before any run is read (grpo.config [D9]); --labels against the runs in main()."""
        at_least(self, "smooth", 1)
        path_name(self, "out", kind="file")


def metrics_file(run: str) -> Path:
    """A run name, run folder or metrics file → its metrics.jsonl (a clear error when there is none)."""
    path = Path(run).expanduser()
    for cand in (path, path / "metrics.jsonl", output_root() / run / "metrics.jsonl"):
        if cand.is_file():
            return cand
    raise UserError(f"run {run!r}: no metrics.jsonl (looked in {path}, {output_root() / run})")


def main() -> None:
    argv = sys.argv[1:]
    positional = []
    while argv and not argv[0].startswith("-"):
        positional.append(argv.pop(0))
    s = parse_settings(PlotSettings, argv, description=__doc__, print_config=False)
    runs = positional + s.runs
    if not runs:
        raise UserError("name at least one run (positional arguments or --runs)")
    if s.labels and len(s.labels) != len(runs):
        raise UserError(f"--labels has {len(s.labels)} entries for {len(runs)} runs")
    files = [metrics_file(r) for r in runs]
    labels = s.labels or [f.parent.name for f in files]
    series = {label: metric_points(f, s.metric) for label, f in zip(labels, files)}
    empty = [label for label, pts in series.items() if not pts]
    if len(empty) == len(series):
        raise UserError(f"no run logged {s.metric!r}")
    if len(set(labels)) != len(labels):
        raise UserError(f"two runs have the same label {labels}; give --labels")
    out = plot_curves(series, s.out, title=s.title, ylabel=s.metric, smooth=s.smooth)
    for label, pts in series.items():
        if pts:
            first = [v for _, v in pts[:s.smooth]]
            last = [v for _, v in pts[-s.smooth:]]
            print(f"{label}: {len(pts)} steps, {s.metric} first {len(first)} {sum(first) / len(first):.3f} -> "
                  f"last {len(last)} {sum(last) / len(last):.3f}")
        else:
            print(f"{label}: no {s.metric!r} logged")
    print(f"wrote {out}", file=sys.stderr)
    if s.summary:
        atomic_write_json(s.summary, {"metric": s.metric, "runs": [summary(label, f, s.metric) for label, f in
                                                                    zip(labels, files) if series[label]]})
        print(f"wrote {s.summary}", file=sys.stderr)


def summary(label: str, path: Path, metric: str) -> dict:
    """First and last logged value of `metric` in one run's metrics file, with its seed and evaluation size."""
    rows = [r for r in read_metrics(path) if r.get(metric) is not None]
    config = path.parent / "config.json"
    seed = json.loads(config.read_text()).get("seed") if config.is_file() else None
    out = {"run": label, "seed": seed, "before": rows[0][metric], "after": rows[-1][metric],
           "before_step": rows[0]["step"], "after_step": rows[-1]["step"]}
    if f"{metric}_stderr" in rows[-1]:
        out.update(stderr_before=rows[0].get(f"{metric}_stderr"), stderr_after=rows[-1][f"{metric}_stderr"])
    if "num_examples" in rows[-1]:
        out["n_eval"] = rows[-1]["num_examples"]
    out["curve"] = [(r["step"], r[metric]) for r in rows]
    return out


if __name__ == "__main__":
    cli_main(main)
