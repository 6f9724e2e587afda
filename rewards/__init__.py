"""rewards: scoring functions for GRPO on text, in TRL's convention; pure Python, no torch.

    f(prompts, completions, **columns) -> list[float | None]      (see `rewards.inputs`)

Every function is pure and deterministic, never raises on any completion text (malformed output gets
the lowest value of its table), and carries its scoring table in its docstring. A configuration names
its reward functions; `get(name)` returns one, `REWARD_FUNCTIONS` lists them all and `PRESETS` gives
the original set of each system of REWARDS.md.

Modules, one concept each: `inputs` (completions and columns), `formats` (tag layouts A B C E),
`numbers` (reading and comparing math answers), `math_answers` (B and generic correctness),
`reasoncheck` (E correctness), `score_model` (A), `sql_text`, `sql_sandbox` (with `sql_watchdog` and
`sql_worker`, the worker process), `sql` (C).
"""
from __future__ import annotations

from typing import Callable

from rewards import formats, math_answers, reasoncheck, score_model, sql

RewardFunction = Callable[..., list]

# name → function; "(ours)" in a docstring marks an improvement added beside the originals.
REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    # A. CoT-filtering score model
    "score_exp": score_model.score_exp,
    "score_quadratic": score_model.score_quadratic,
    "think_score_format": formats.think_score_format,
    # B. GSM8K SFT → GRPO
    "match_format_exactly": formats.match_format_exactly,
    "match_format_approximately": formats.match_format_approximately,
    "check_answer": math_answers.check_answer,
    "check_answer_strict": math_answers.check_answer_strict,
    "check_numbers": math_answers.check_numbers,
    "check_numbers_robust": math_answers.check_numbers_robust,
    # C. text-to-SQL
    "sql_format": formats.sql_format,
    "sql_format_strict": formats.sql_format_strict,
    "sql_execution": sql.sql_execution,
    "sql_execution_accuracy": sql.sql_execution_accuracy,
    "sql_complexity": sql.sql_complexity,
    "sql_complexity_tokenized": sql.sql_complexity_tokenized,
    "sql_reasoning_quality": sql.sql_reasoning_quality,
    # E. grpo-reasoncheck
    "correctness": reasoncheck.correctness,
    "integer": reasoncheck.integer,
    "strict_format": formats.strict_format,
    "soft_format": formats.soft_format,
    "xml_count": formats.xml_count,
    # any tag scheme
    "numeric_correctness": math_answers.numeric_correctness,
}

# The reward functions each original system trained with (REWARDS.md A, B, C, E).
PRESETS: dict[str, tuple[str, ...]] = {
    "score_model": ("score_exp",),
    "gsm8k": ("match_format_exactly", "match_format_approximately", "check_answer", "check_numbers"),
    "text_to_sql": ("sql_format", "sql_execution", "sql_complexity", "sql_reasoning_quality"),
    "reasoncheck": ("xml_count", "soft_format", "strict_format", "integer", "correctness"),
    "drill": ("numeric_correctness",),  # ours: grpo.data.drill
}


class UnknownRewardError(KeyError):
    """A reward name that is not in REWARD_FUNCTIONS; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


def get(name: str) -> RewardFunction:
    """The reward function registered as `name`.

    Raises:
        UnknownRewardError: naming the unknown reward and listing the valid ones.
    """
    try:
        return REWARD_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise UnknownRewardError(f"unknown reward function {name!r}; valid names: "
                                 f"{', '.join(sorted(REWARD_FUNCTIONS))}") from None


__all__ = ["REWARD_FUNCTIONS", "PRESETS", "RewardFunction", "UnknownRewardError", "get"]
