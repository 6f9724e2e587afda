"""Tasks: loading rows from the hub or local files, and turning them into prompts for each system.

    rows          DataError, load_rows: hub id / .jsonl / .json / directory, bad rows named "file:line"
    gsm8k         load_gsm8k, gold extraction, prompts for systems B (working out) and E (reasoning)
    arithmetic    generated word problems in GSM8K format (no download; the main job before issue #18)
    drill         the main job's task: bare arithmetic in five levels, held-out problems never trained on
    text_to_sql   gretelai/synthetic_text_to_sql rows, a bundled hand-written set, system C's prompt
    prompts       max_prompt_length: its default from the model's positions, left truncation or rejection

Every loader returns a list of plain dicts; every `to_*_prompts` returns TRL-style rows
`{"prompt": [{"role", "content"}, ...], "prompt_suffix": str, <columns for the rewards>}`, where
`prompt_suffix` is text the rollout appends after the chat template's generation prompt ("" except for
system B, whose template ends with "<start_working_out>").

Bundled files (package data, next to this file): arithmetic_{train,test}.jsonl (2,000 / 200, written by
scripts/make_default_task.py from `arithmetic.bundled_rows`) and sql_{train,test}.jsonl (49 / 12).
"""
from .arithmetic import arithmetic_task
from .gsm8k import (load_gsm8k, gsm8k_cot, gsm8k_gold, sft_completion, to_reasoning_prompts,
                    to_working_out_prompts)
from .prompts import (PROMPT_OVERFLOW, PromptFit, fit_rows, prompt_lengths, resolve_max_prompt_length,
                      truncate_prompts_left)
from .rows import DataError, Row, check_row, load_rows
from .text_to_sql import load_text_to_sql, to_sql_prompts

__all__ = ["DataError", "PROMPT_OVERFLOW", "PromptFit", "Row", "arithmetic_task", "check_row", "fit_rows",
           "gsm8k_cot", "gsm8k_gold", "load_gsm8k", "load_rows", "load_text_to_sql", "prompt_lengths",
           "resolve_max_prompt_length", "sft_completion", "to_reasoning_prompts", "to_sql_prompts",
           "to_working_out_prompts", "truncate_prompts_left"]
