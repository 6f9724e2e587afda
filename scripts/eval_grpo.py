"""Evaluate a model on a GRPO task's held-out rows with the task's own reward functions (before/after a run).

    python scripts/eval_grpo.py --config configs/recipe_gsm8k_format.json                    # the base model
    python scripts/eval_grpo.py --config configs/recipe_gsm8k_format.json --model-path recipe_gsm8k_format
    python scripts/eval_grpo.py --task arithmetic --num-examples 50 --output-file arith_base.json

`--model-path` takes a run name (→ outputs/<run>/final), a checkpoint or model folder, a named model or a
hub id; an adapter loads on the base it was trained from. Without it the base `model` is evaluated.
Config files: flat, or sectioned (this script reads `common` then `eval`), so one file holds the
training run (`grpo`) and its evaluation.

Steps:
    1. settings; the first `num_examples` rows of `split` (default `test`: rows training never sees) of
       the task, read before the model so that a bad dataset fails fast
    2. load the model to evaluate (eval mode, no new adapter)
    3.-4. grpo.evaluation: one completion per prompt through grpo/generate.py, greedy by default
       (repeatable) or sampled with the training sampler (`--greedy false`); every reward function of the
       task on every completion, called exactly as in training (grpo.tasks.task_rewards)
    5. write the per-example JSONL and the JSON summary (each atomically), print the table

Metrics (printed, and in the summary JSON; grpo.evaluation):
    <f>/mean            mean of reward function f (examples where f returned None are left out)
    <f>/rate            fraction of examples where f > 0: for a format reward, the format rate; for
                        a correctness reward, the accuracy; <f>/rate_stderr its binomial standard error
    <f>/rate/level_<k>  the rate per difficulty level (tasks whose rows have a `level`: drill)
    reward              mean weighted total (the training reward, without overlong punishment)
    mean_completion_tokens, truncated_fraction, seconds, tokens_per_second

Outputs: `output_file` (a bare name goes to outputs/eval/) holds the summary; the same path with suffix
.jsonl holds one record per example: the prompt's last message, the reply, and each reward.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, at_least, cli_main, parse_settings, path_name  # noqa: E402
from grpo.generate import GenerationSettings  # noqa: E402
from grpo.evaluation import evaluate_task  # noqa: E402
from grpo.models import load_model_from_settings  # noqa: E402
from grpo.run import atomic_write_json, atomic_write_text, output_file, seed_everything  # noqa: E402
from grpo.settings import TaskSettings  # noqa: E402


@dataclass
class EvalGRPOSettings(GenerationSettings, TaskSettings):
    model_path: str = ""
    """model to evaluate: a run name, checkpoint or model folder, named model or hub id; default: `model`"""
    split: str = "test"
    """split to evaluate (held out from training)"""
    num_examples: Optional[int] = 200
    """evaluate the first N rows of the split; null = all"""
    output_file: str = "eval_grpo.json"
    """summary JSON; a bare name goes to outputs/eval/; per-example records beside it as .jsonl"""
    # GenerationSettings with this script's defaults
    batch_size: int = 16
    """prompts generated together"""
    max_new_tokens: int = 128
    """most tokens generated per completion"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        at_least(self, "num_examples", 1, why="null = all")
        path_name(self, "output_file", kind="file")


def main() -> None:
    # 1. settings and rows
    s = parse_settings(EvalGRPOSettings, section="eval", description=__doc__)
    task = s.load_task(split=s.split, limit=s.num_examples)
    if not task.rows:
        raise UserError(f"task {s.task!r} [{s.split}] has no rows")
    if len({r.get("prompt_suffix", "") for r in task.rows}) != 1:
        raise UserError(f"task {s.task!r}: rows with different prompt_suffix values cannot be batched")
    weights = s.reward_weights or [1.0] * len(task.reward_funcs)  # one per function (TaskSettings.validate)
    path = output_file(s.output_file, "eval")
    seed_everything(s.seed)

    # 2. model
    model, tok = load_model_from_settings(s, trainable=False, model=s.model_path or None)

    # 3.-4. generation and rewards (grpo.evaluation)
    result = evaluate_task(model, tok, task, weights=weights, batch_size=s.batch_size,
                           max_new_tokens=s.max_new_tokens, greedy=s.greedy, temperature=s.temperature,
                           top_k=s.top_k, top_p=s.top_p, max_prompt_length=s.max_prompt_length, bf16=s.bf16,
                           non_finite=s.non_finite_rewards)
    metrics = result.metrics

    # 5. outputs
    records = []
    for row, text, values in zip(task.rows, result.texts, result.per_function.tolist()):
        prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        records.append({"prompt": prompt, "reply": row.get("prompt_suffix", "") + text,
                        **({"level": row["level"]} if "level" in row else {}),
                        **{name: (None if math.isnan(v) else v) for name, v in zip(task.reward_names, values)}})
    atomic_write_text(path.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(path, {"model": s.model_path or s.model, "task": s.task, "split": s.split, **metrics,
                             "records": str(path.with_suffix(".jsonl")), "settings": dataclasses.asdict(s)})
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(f"summary: {path}\nper example: {path.with_suffix('.jsonl')}")


if __name__ == "__main__":
    cli_main(main)
