"""Plots written at the end of runs (matplotlib, headless, atomic)."""
from __future__ import annotations

from pathlib import Path

from grpo.run import atomic_path, read_metrics


def plot_reward_curve(metrics_file: str | Path, out: str | Path, *, title: str = "",
                      keys: tuple[str, ...] = ("reward",), smooth: int = 5) -> Path:
    """Reward per step (points) and its running mean over `smooth` steps (line) from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_file)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if not pts:
            continue
        steps, values = zip(*pts)
        ax.plot(steps, values, ".", alpha=0.35)
        run_mean = [sum(values[max(0, i - smooth + 1):i + 1]) / len(values[max(0, i - smooth + 1):i + 1])
                    for i in range(len(values))]
        ax.plot(steps, run_mean, "-", label=f"{key} (mean of {smooth})")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
