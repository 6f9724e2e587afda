"""Tasks: what a GRPO run trains on — prompt rows, the reward functions, and how generation stops.

    task          data (default source)                prompt format                     rewards (preset)
    arithmetic    bundled generated word problems      <reasoning>…</reasoning><answer>   reasoncheck (E)
    drill         generated bare arithmetic, 5 levels  "37 + 5 =" → the number            numeric_correctness
    gsm8k         openai/gsm8k or a local JSONL        <start_working_out>…<SOLUTION>     gsm8k (B)
    reasoncheck   openai/gsm8k or a local JSONL        <reasoning>…</reasoning><answer>   reasoncheck (E)
    text_to_sql   bundled set or gretel-format JSONL   <reasoning>…</reasoning><sql>      text_to_sql (C)
    score_model   CSV/JSONL from make_cot_dataset.py   <think>…</think><score>            score_model (A)

[D1] The default task primes the answer: its system prompt shows one worked example of the format and
     the generation prompt ends with "<reasoning>\n" (`prompt_suffix`), as system B's template ends with
     "<start_working_out>". A 135M model almost never opens the tags unprimed, which would leave every
     reward at 0 and GRPO without signal.
[D2] Reward functions score the assistant's whole reply: `prompt_suffix` + the generated text (the
     suffix is part of the reply the model is trained to continue).
[D3] Rewards are float64 from the function to the advantages: two rewards of 3e38 (finite in fp32) no
     longer overflow when weighted and summed.
[D4] A reward of ±inf would make every advantage of its group NaN and the saved model NaN (issue #13):
     it is an error naming the function and the row, unless `non_finite_rewards=none` makes it a None
     (unscorable: advantage 0, out of its group's baseline), counted in the metric rewards/non_finite.
     NaN is None, as in TRL (which stores None as NaN).

A reward function has TRL's signature `f(prompts, completions, **columns) -> list[float | None]`;
`reward_funcs` may name any function in `rewards.REWARD_FUNCTIONS` or a `module:function` path to
a user's own (so TRL reward functions drop in).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from grpo.config import UserError


@dataclass
class Task:
    name: str
    rows: list[dict[str, Any]]  # TRL-style rows: "prompt" (chat messages), "prompt_suffix", reward columns
    reward_names: list[str]
    reward_funcs: list[Callable[..., list]] = field(repr=False)
    stop_strings: tuple[str, ...] = ()


DEFAULT_SOURCES = {"arithmetic": "arithmetic", "drill": "generated", "gsm8k": "openai/gsm8k", "reasoncheck": "openai/gsm8k",
                   "text_to_sql": "bundled", "score_model": ""}
PRESET_OF_TASK = {"arithmetic": "reasoncheck", "drill": "drill", "gsm8k": "gsm8k", "reasoncheck": "reasoncheck",
                  "text_to_sql": "text_to_sql", "score_model": "score_model"}


ARITHMETIC_SYSTEM_PROMPT = (
    "Solve the math problem. Think step by step inside <reasoning> tags, then give only the final number "
    "inside <answer> tags.\nExample:\nQuestion: Ann has 3 apples and buys 4 more. How many apples does she "
    "have?\n<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>")


def task_rewards(task: Task, rows: list[dict[str, Any]], completions: list[str], *, G: int = 1,
                 non_finite: str = "error"):
    """Every reward function of `task` on every completion: a float64 tensor [B·G, F]; None and NaN → NaN.

    `completions[i·G + j]` is the j-th generated text for `rows[i]`. Functions are called as TRL calls
    them: prompts, the assistant replies (`prompt_suffix` + text [D2]; chat messages when the prompts
    are chat messages), and every other column of the rows as a keyword list.
    Values are kept in float64 [D3]. A ±inf reward is an error naming the function and the row
    (`non_finite="error"`), or is kept as ±inf for the caller to count and treat as None ("none") [D4].
    """
    import math

    import torch

    prompts = [r["prompt"] for r in rows for _ in range(G)]
    replies = [r.get("prompt_suffix", "") + c for r, c in zip((r for r in rows for _ in range(G)), completions)]
    if not isinstance(prompts[0], str):
        replies = [[{"role": "assistant", "content": c}] for c in replies]
    columns = {k: [r[k] for r in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
    out = torch.empty(len(prompts), len(task.reward_funcs), dtype=torch.float64)  # [B·G, F]  [D3]
    for j, fn in enumerate(task.reward_funcs):
        name = task.reward_names[j]
        values = fn(prompts, replies, **columns)
        if len(values) != len(prompts):
            raise UserError(f"reward function {name!r} returned {len(values)} values for {len(prompts)} completions")
        for i, v in enumerate(values):
            try:
                x = math.nan if v is None else float(v)
            except (TypeError, ValueError, OverflowError):
                raise UserError(f"reward function {name!r} returned {v!r} (not a number) for completion {i % G} "
                                f"of prompt row {i // G} of the batch") from None
            if math.isinf(x) and non_finite == "error":  # [D4]
                raise UserError(f"reward function {name!r} returned {x} for completion {i % G} of prompt row "
                                f"{i // G} of the batch; fix the function, or set non_finite_rewards=none to "
                                "treat such rewards as None (counted in rewards/non_finite)")
            out[i, j] = x
    return out


def with_system_prompt(prompt: Any, system_prompt: str, *, task: str) -> list[dict[str, str]]:
    """Chat messages with their system message replaced by (or, without one, preceded by) `system_prompt`."""
    if isinstance(prompt, str):
        raise UserError(f"task {task!r} has raw-text prompts: system_prompt needs chat-message prompts")
    rest = [m for m in prompt if m.get("role") != "system"]
    return [{"role": "system", "content": system_prompt}, *rest]


def resolve_reward(name: str) -> Callable[..., list]:
    """A registered reward name, or `package.module:function` for a user's own function."""
    import rewards

    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"reward function {name!r}: {e}") from None
    try:
        return rewards.get(name)
    except rewards.UnknownRewardError as e:
        raise UserError(str(e)) from None


def load_task(name: str, *, source: str = "", split: str = "train", limit: int | None = None,
              reward_funcs: list[str] | None = None, prompt_suffix: str | None = None,
              system_prompt: str | None = None) -> Task:
    """Build a `Task` by name (table in the module docstring); `source` overrides the default data.

    `prompt_suffix` replaces every row's priming text [D1], `system_prompt` every row's system message
    (None keeps the task's own).
    """
    import rewards
    from grpo import data

    if name not in DEFAULT_SOURCES:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(DEFAULT_SOURCES)}")
    source = source or DEFAULT_SOURCES[name]
    if name == "arithmetic":  # [D1]
        rows = data.to_reasoning_prompts(data.load_gsm8k(source, split=split, limit=limit),
                                         system_prompt=ARITHMETIC_SYSTEM_PROMPT)
        rows = [{**r, "prompt_suffix": "<reasoning>\n"} for r in rows]
    elif name == "drill":
        from grpo.data.drill import drill_rows

        if source != "generated":
            raise UserError(f"task drill generates its problems: dataset {source!r} cannot be used with it")
        try:
            rows = drill_rows(split, limit=limit)
        except ValueError as e:
            raise UserError(str(e)) from None
    elif name == "reasoncheck":
        rows = data.to_reasoning_prompts(data.load_gsm8k(source, split=split, limit=limit))
    elif name == "gsm8k":
        rows = data.to_working_out_prompts(data.load_gsm8k(source, split=split, limit=limit))
    elif name == "text_to_sql":
        rows = data.to_sql_prompts(data.load_text_to_sql(source, split=split, limit=limit))
    else:
        from grpo.data import score_model as score_data  # written by scripts/make_cot_dataset.py

        if not source:
            raise UserError("task score_model needs --dataset: the CSV written by scripts/make_cot_dataset.py")
        rows = score_data.to_score_prompts(score_data.load_score_rows(source, limit=limit))
    if prompt_suffix is not None:
        rows = [{**r, "prompt_suffix": prompt_suffix} for r in rows]
    if system_prompt is not None:
        rows = [{**r, "prompt": with_system_prompt(r["prompt"], system_prompt, task=name)} for r in rows]
    names = list(reward_funcs) if reward_funcs else list(rewards.PRESETS[PRESET_OF_TASK[name]])
    return Task(name=name, rows=rows, reward_names=names, reward_funcs=[resolve_reward(n) for n in names])
