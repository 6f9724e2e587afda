"""Plots written at the end of runs (matplotlib, headless, atomic)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from grpo.run import atomic_path, read_metrics


def plot_curves(series: dict[str, Sequence[tuple[int, float]]], out: str | Path, *, title: str = "",
                ylabel: str = "reward", smooth: int = 5) -> Path:
    """One curve per entry of `series` (label → (step, value) points): the points, and their running mean
    over `smooth` steps as a line, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=110)
    for (label, pts), color in zip(series.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        if not pts:
            continue
        steps, values = zip(*pts)
        ax.plot(steps, values, ".", color=color, alpha=0.35)
        run_mean = [sum(values[max(0, i - smooth + 1):i + 1]) / len(values[max(0, i - smooth + 1):i + 1])
                    for i in range(len(values))]
        ax.plot(steps, run_mean, "-", color=color, label=f"{label} (mean of {smooth})")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)


def metric_points(metrics_file: str | Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in every line of a metrics.jsonl that has it."""
    return [(r["step"], r[key]) for r in read_metrics(metrics_file) if r.get(key) is not None]


def plot_reward_curve(metrics_file: str | Path, out: str | Path, *, title: str = "",
                      keys: tuple[str, ...] = ("reward",), smooth: int = 5) -> Path:
    """`keys` per step of one run's metrics.jsonl (points and running mean)."""
    return plot_curves({key: metric_points(metrics_file, key) for key in keys}, out, title=title,
                       ylabel=keys[0] if len(keys) == 1 else "value", smooth=smooth)
