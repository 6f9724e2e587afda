"""Held-out evaluation of a GRPO task: one completion per prompt, scored by the task's own reward functions.

Used by scripts/eval_grpo.py (a model before or after a run) and by the training loop every `eval_steps`
(the curve of held-out accuracy during a run: outputs/<run>/eval.jsonl, grpo.loop).

Metrics (`summarise`):
    <f>/mean               mean of reward function f (examples where f returned None are left out)
    <f>/rate               fraction of examples where f > 0: for a format reward the format rate, for a
                           correctness reward the accuracy
    <f>/rate_stderr        binomial standard error of that rate, sqrt(p (1 − p) / n)
    <f>/rate/level_<k>     the rate among the rows of level k, when the rows have a `level` column
                           (the drill task, grpo.data.drill)
    reward                 mean weighted total (the training reward, without overlong punishment)

Implementation details:
    [E1] Under several ranks each rank evaluates rows[rank::world] and the per-example results are
         gathered into the rows' order, so every rank returns the same numbers as one process would
         (greedy decoding; a different batch composition can only change float rounding).
    [E2] The model is evaluated in eval mode inside `sampling_context` (the whole model gathered once
         under fsdp2) and under the trainer's autocast, then put back in the mode it was in.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo import distributed as dd
from grpo.advantages import weighted_rewards
from grpo.generate import generate_texts
from grpo.models import autocast
from grpo.sharding import sampling_context
from grpo.tasks import Task, task_rewards


@dataclass
class Evaluation:
    metrics: dict[str, float]
    texts: list[str] = field(repr=False)
    per_function: torch.Tensor = field(repr=False)  # [N, F] float64, NaN where a function returned None


def summarise(names: list[str], per_function: torch.Tensor, weights: list[float],
              levels: list[Any] | None = None) -> dict[str, float]:
    """Per reward function: mean over non-NaN values, the rate of values > 0 with its binomial standard
    error (and per level when `levels` is given); the weighted total's mean."""
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        col = per_function[:, j]  # [N]
        valid = col[~col.isnan()]
        n = valid.numel()
        rate = float((valid > 0).double().mean()) if n else math.nan
        out[f"{name}/mean"] = float(valid.mean()) if n else math.nan
        out[f"{name}/rate"] = rate
        out[f"{name}/rate_stderr"] = math.sqrt(rate * (1 - rate) / n) if n else math.nan
        for level in sorted(set(levels or [])):
            at = col[torch.tensor([x == level for x in levels])]
            at = at[~at.isnan()]
            out[f"{name}/rate/level_{level}"] = float((at > 0).double().mean()) if at.numel() else math.nan
    total = weighted_rewards(per_function.unsqueeze(1), weights).squeeze(1)  # [N]
    out["reward"] = float(total.nanmean())
    return out


def evaluate_task(model, tok, task: Task, *, weights: list[float], batch_size: int, max_new_tokens: int,
                  greedy: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  max_prompt_length: int | None = None, bf16: bool | None = False, non_finite: str = "error",
                  desc: str = "eval") -> Evaluation:
    """Every row of `task`: a completion (greedy by default), the task's rewards, `summarise` (module doc).
    non_finite: a ±inf reward is an error, or ("none") unscorable like None, as in training (grpo.tasks [D4])."""
    rows = task.rows
    suffixes = {r.get("prompt_suffix", "") for r in rows}
    if len(suffixes) != 1:
        raise ValueError(f"task {task.name!r}: rows with different prompt_suffix values cannot be batched")
    rank, world = dd.rank(), dd.world_size()
    mine = rows[rank::world]  # [E1]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # [E2]
    t0 = time.perf_counter()
    try:
        with autocast(device, bf16), sampling_context(model):
            gen = generate_texts(model, tok, [r["prompt"] for r in mine], batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                                 top_k=top_k, top_p=top_p, prompt_suffix=suffixes.pop(), desc=desc,
                                 max_prompt_length=max_prompt_length)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    values = task_rewards(task, mine, gen.texts, non_finite=non_finite) if mine else torch.empty(0, 0)
    values = values.masked_fill(values.isinf(), math.nan).tolist()  # [n_mine, F]; ±inf kept only with "none"
    parts = dd.all_gather_objects((gen.texts, gen.lengths, gen.truncated, values)) if world > 1 else \
        [(gen.texts, gen.lengths, gen.truncated, values)]
    n = len(rows)
    texts, lengths, truncated, table = [""] * n, [0] * n, [False] * n, [[]] * n
    for r, (t, ln, tr, v) in enumerate(parts):  # rank r held rows r, r + world, … [E1]
        for k, i in enumerate(range(r, n, world)):
            texts[i], lengths[i], truncated[i], table[i] = t[k], ln[k], tr[k], v[k]
    per_function = torch.tensor(table, dtype=torch.float64).reshape(n, len(task.reward_funcs))  # [N, F]
    levels = [r["level"] for r in rows] if rows and "level" in rows[0] else None
    metrics = {**summarise(task.reward_names, per_function, weights, levels), "num_examples": n,
               "mean_completion_tokens": sum(lengths) / n, "truncated_fraction": sum(truncated) / n,
               "seconds": seconds, "tokens_per_second": sum(lengths) / max(seconds, 1e-9)}  # every rank's tokens
    return Evaluation(metrics, texts, per_function)
