"""GSM8K (Cobbe et al. 2021, arXiv 2110.14168) and the prompts of the two GSM8K systems we serve.

Rows returned by `load_gsm8k` (the bundled arithmetic task has the same format):
    question  the word problem
    answer    the full reference solution, ending in "#### <number>" (GSM8K's own field)
    gold      the text after "####", commas removed, stripped: "1,000" -> "1000"
    cot       the solution before "####" with GSM8K's calculator annotations "<<48/2=24>>" removed

Prompt rows (TRL style: `prompt` is a list of chat messages, other keys reach the reward functions
as keyword arguments):
    to_working_out_prompts   system B, `<start_working_out>…<end_working_out><SOLUTION>…</SOLUTION>`
    to_reasoning_prompts     system E, `<reasoning>…</reasoning><answer>…</answer>`
Both put the gold in `answer` (as TRL's GSM8K recipes and REWARDS.md do) and keep the full reference
solution in `solution`.

Implementation details:
    [D1] System B's chat template ends the generation prompt with `<start_working_out>` (REWARDS.md B).
         We keep the chat messages template-agnostic and put that text in `prompt_suffix`; the rollout
         appends it after `apply_chat_template(..., add_generation_prompt=True)`, so the completion (and
         every reward) starts inside the working-out block. The SFT target `sft_completion` starts
         there too, so SFT and GRPO see the same prompt.
    [D2] The gold is taken after the *last* "####" (GSM8K has exactly one; the last is the answer if a
         user's file has more). A row without "####" or with an empty gold is a data error.
    [D3] Source name "arithmetic" loads the bundled default task instead of the hub or a path, so a
         config can say `"dataset": "arithmetic"` and train with no download.
"""
from __future__ import annotations

import re
from pathlib import Path

from . import arithmetic
from .rows import DataError, Row, load_rows

HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
DEFAULT_TASK = "arithmetic"  # [D3]

# System B tags and prompt (REWARDS.md B); the words are ours, the tags are the system's contract.
REASONING_START, REASONING_END = "<start_working_out>", "<end_working_out>"
SOLUTION_START, SOLUTION_END = "<SOLUTION>", "</SOLUTION>"
WORKING_OUT_SYSTEM_PROMPT = (
    f"You are given a math problem. Think it through step by step and write your working out between "
    f"{REASONING_START} and {REASONING_END}. Then write only the final number between "
    f"{SOLUTION_START} and {SOLUTION_END}.")

# System E prompt: the exact layout its strict-format reward checks (REWARDS.md E).
REASONING_SYSTEM_PROMPT = """Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>"""

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def gsm8k_gold(answer: str) -> str:
    """The text after the last "####", commas removed, stripped [D2]. Raises ValueError if none."""
    if "####" not in answer:
        raise ValueError("answer has no '####' followed by the final number")
    gold = answer.rpartition("####")[2].replace(",", "").strip()
    if not gold:
        raise ValueError("answer has nothing after '####'")
    return gold


def gsm8k_cot(answer: str) -> str:
    """The reasoning before the last "####", without calculator annotations like "<<48/2=24>>"."""
    return _CALCULATOR.sub("", answer.rpartition("####")[0]).strip()


def _parse(row: Row) -> Row:
    return {**row, "gold": gsm8k_gold(row["answer"]), "cot": gsm8k_cot(row["answer"])}


def load_gsm8k(source: str | Path = HUB_ID, split: str = "train", limit: int | None = None, *,
               config: str | None = HUB_CONFIG) -> list[Row]:
    """GSM8K-format rows `{"question", "answer", "gold", "cot"}` (+ any extra keys of the source).

    Args:
        source: "openai/gsm8k" (hub), "arithmetic" (the bundled default task [D3]), a local .jsonl/.json
            file, or a directory holding `{split}.jsonl`.
        split: "train" or "test" (any split name for a directory or hub id).
        limit: the first `limit` rows only; None for all (GSM8K: 7,473 train, 1,319 test).
        config: hub config ("main" for openai/gsm8k; "socratic" is the other one).
    Raises:
        DataError naming "file:line" of each row that is not an object with str `question` and `answer`
        or has no "####" gold.
    """
    if str(source) == DEFAULT_TASK:  # [D3]
        source = arithmetic.BUNDLED_DIR / f"arithmetic_{split}.jsonl"
        if not source.is_file():
            raise DataError(f"no bundled split {split!r} of the arithmetic task "
                            f"(have: {', '.join(arithmetic.BUNDLED_SIZES)})")
    return load_rows(source, split=split, config=config, limit=limit, parse=_parse,
                     required={"question": str, "answer": str})


def _prompt_row(row: Row, system_prompt: str) -> Row:
    return {"prompt": [{"role": "system", "content": system_prompt},
                       {"role": "user", "content": row["question"]}],
            "answer": row["gold"], "question": row["question"], "solution": row["answer"],
            "cot": row["cot"]}


def sft_completion(row: Row) -> str:
    """System B's SFT target for a GSM8K-format row: text that follows `prompt_suffix` [D1].

        "{cot}<end_working_out><SOLUTION>{gold}</SOLUTION>"
    """
    return f"{row['cot']}{REASONING_END}{SOLUTION_START}{row['gold']}{SOLUTION_END}"


def to_working_out_prompts(rows: list[Row], *, system_prompt: str = WORKING_OUT_SYSTEM_PROMPT) -> list[Row]:
    """System B rows: `{"prompt": [system, user], "prompt_suffix": "<start_working_out>", "answer": gold,
    "question", "solution", "cot", "sft_completion"}` [D1]."""
    return [{**_prompt_row(r, system_prompt), "prompt_suffix": REASONING_START,
             "sft_completion": sft_completion(r)} for r in rows]


def to_reasoning_prompts(rows: list[Row], *, system_prompt: str = REASONING_SYSTEM_PROMPT) -> list[Row]:
    """System E rows: `{"prompt": [system, user], "prompt_suffix": "", "answer": gold, "question",
    "solution", "cot"}`."""
    return [{**_prompt_row(r, system_prompt), "prompt_suffix": ""} for r in rows]
