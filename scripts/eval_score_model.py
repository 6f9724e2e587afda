"""Evaluate a CoT-filtering score model (system A, REWARDS.md A): predicted score vs. target.

    python scripts/eval_score_model.py --config configs/score_model.json                      # base model
    python scripts/eval_score_model.py --config configs/score_model.json --model-path score_model_grpo
    python scripts/eval_score_model.py --model-path score_model_grpo --dataset my_cot_test.csv --num-examples 100

`--model-path` takes a run name (score_model_grpo → outputs/score_model_grpo/final), a folder, a named
model or a hub id; without it the base `model` is evaluated. The dataset is a CSV/JSONL written by
scripts/make_cot_dataset.py (use one made from a split the model was not trained on). Config files:
flat, or sectioned (this script reads `common` then `eval_score_model`).

Steps:
    1. settings; the dataset rows as score prompts (read before the model, so bad data fails fast), with
       `system_prompt` / `prompt_suffix` as in training (configs/recipe_score_model.json)
    2. load the model to evaluate (eval mode, no new adapter)
    3. one completion per prompt, in batches (greedy by default: the score is a point estimate)
    4. read the score of each completion (rewards.formats.read_score: needs `<think>` and one number
       in [0, 1] inside `<score>…</score>`, else invalid); the reward score_exp of each
    5. write the per-example CSV, the summary JSON and the scatter plot (each atomically); print

Metrics (printed, and in the summary JSON):
    num_examples, num_valid, num_invalid, invalid_rate    outputs whose score could (not) be read
    mse, mae, rmse      mean squared / absolute error and its root, pred − target over valid outputs
                        (null when no output is valid)
    pearson_r           correlation of pred and target over valid outputs (null if < 2 or constant)
    mean_reward         mean score_exp reward (invalid outputs score −1), the training objective
    target_mean         mean target of the evaluated rows
    seconds             wall time of generation

Outputs: `output_file` (CSV; a bare name goes to outputs/eval/) with columns sql, predicted_nl, target,
generated_text (the whole reply: `prompt_suffix` + the generated text), predicted_score, valid, reward; beside it `.json` (metrics + settings) and `.png`
(scatter of predicted score against target, the diagonal is a perfect model).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, at_least, cli_main, parse_settings, path_name  # noqa: E402
from grpo.data.score_model import regression_metrics  # noqa: E402
from grpo.generate import GenerationSettings  # noqa: E402
from grpo.models import ModelSettings, load_model_from_settings  # noqa: E402
from grpo.settings import PromptSettings  # noqa: E402
from grpo.run import atomic_path, atomic_write_json, output_file, seed_everything  # noqa: E402
from rewards.formats import read_score  # noqa: E402
from rewards.score_model import score_exp  # noqa: E402

COLUMNS = ["sql", "predicted_nl", "target", "generated_text", "predicted_score", "valid", "reward"]


@dataclass
class EvalScoreSettings(GenerationSettings, PromptSettings, ModelSettings):
    model_path: str | None = None
    """model to evaluate: a run name (score_model_grpo), folder, named model or hub id; default: `model`"""
    dataset: str = "outputs/data/cot_dataset_test.csv"
    """score-model rows: the CSV (or JSONL) written by scripts/make_cot_dataset.py"""
    num_examples: int | None = None
    """evaluate the first N rows; null = all"""
    output_file: str = "score_eval.csv"
    """per-example CSV; a bare name goes to outputs/eval/; .json summary and .png scatter beside it"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        at_least(self, "num_examples", 1, why="null = all")
        path_name(self, "output_file", kind="file")


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Sample correlation of two equally long lists; None when < 2 points or one is constant."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def scatter(records: list[dict], path: Path, title: str) -> Path:
    """Predicted score (valid outputs) against target, with the y = x diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid = [r for r in records if r["valid"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect")
    ax.scatter([r["target"] for r in valid], [r["predicted_score"] for r in valid], s=14, alpha=0.6,
               label=f"valid outputs ({len(valid)}/{len(records)})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("target (similarity_with_penalty)")
    ax.set_ylabel("predicted score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def main() -> None:
    # 1. settings, rows
    s = parse_settings(EvalScoreSettings, section="eval_score_model", description=__doc__)
    csv_path = output_file(s.output_file, "eval")
    rows = s.task_rows("score_model", source=s.dataset, limit=s.num_examples)
    if not rows:
        raise UserError(f"{s.dataset} has no rows")
    seed_everything(s.seed)

    # 2. model
    model, tok = load_model_from_settings(s, trainable=False, model=s.model_path)

    # 3. generation
    t0 = time.perf_counter()
    suffix = rows[0].get("prompt_suffix", "")  # one suffix for all rows (PromptSettings)
    gen = s.generate(model, tok, [r["prompt"] for r in rows], prompt_suffix=suffix, desc="score")
    seconds = time.perf_counter() - t0
    replies = [suffix + text for text in gen.texts]  # what the reward scores: the whole reply (grpo.tasks [D2])

    # 4. scores, rewards, metrics
    preds = [read_score(text) for text in replies]
    targets = [r["target"] for r in rows]
    rewards = score_exp(None, replies, target=targets)
    records = [{"sql": r["sql"], "predicted_nl": r["predicted_nl"], "target": t, "generated_text": text,
                "predicted_score": p, "valid": p is not None, "reward": w}
               for r, t, text, p, w in zip(rows, targets, replies, preds, rewards)]
    valid = [(p, t) for p, t in zip(preds, targets) if p is not None]
    metrics = {**regression_metrics(preds, targets),
               "pearson_r": pearson([p for p, _ in valid], [t for _, t in valid]),
               "mean_reward": sum(rewards) / len(rewards), "target_mean": sum(targets) / len(targets),
               "seconds": seconds}

    # 5. outputs
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    name = s.model_path or s.model
    png = scatter(records, csv_path.with_suffix(".png"), f"{name}: MSE {_fmt(metrics['mse'])}, "
                                                        f"MAE {_fmt(metrics['mae'])}, invalid {metrics['num_invalid']}")
    summary = atomic_write_json(csv_path.with_suffix(".json"), {"model": name, **metrics, "csv": str(csv_path),
                                                                "plot": str(png), "settings": dataclasses.asdict(s)})
    print("\n".join(f"{k:<14} {_fmt(v)}" for k, v in metrics.items()))
    print(f"per-example results: {csv_path}\nsummary: {summary}\nscatter plot: {png}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    cli_main(main)
