"""System A's data (REWARDS.md A): the CoT-filtering dataset, its prompts, and its evaluation numbers.

    rows = load_score_rows("outputs/cot/cot_dataset.csv")     # written by scripts/make_cot_dataset.py
    prompts = to_score_prompts(rows)                          # for scripts/train_grpo.py --task score_model

Dataset rows (CSV or JSONL), one per (query, generated reasoning, generated question):
    sql                      the gold query (what the question should ask)
    reasoning                the policy's reasoning about the query it was shown (maybe a corrupted one)
    predicted_nl             the question the policy wrote
    similarity_with_penalty  target ∈ [0, 1] (grpo.data.cot_targets); `sbert_similarity` or `target` also read
    true_nl, corrupted_sql, corruptions, is_corrupted, corruption_count, cosine, entity_score: kept as they are

The score model sees the gold SQL, the reasoning and the question, and answers
`<think>…</think><score>x</score>`; `rewards.score_model.score_exp` compares x with the target.

Also here: the prompt that makes a policy write the reasoning and question (dataset creation), its
parser, and the regression numbers of the evaluation (`regression_metrics`).

Implementation details:
[D1] CSV rows are located as "file:line" with the line where the record starts (a quoted field may
     span lines); every bad row is listed before one DataError is raised, as `grpo.data.rows` does.
[D2] The target is stored as a float under `similarity_with_penalty` and `target` (CSV cells are
     text); it must be a finite number in [0, 1], else the row is reported. A number too large for a
     float (1e400, an integer of 400 digits) is reported the same way; it used to escape as an
     OverflowError naming no row (issue #13 item 6(d)). Long values are shortened in the message.
[D3] Parsing a generation (`split_generation`): the question is the first `<question>…</question>`;
     else the text after the last "question:" on a line; else the last non-empty line of more than
     ten characters that is not a step/reasoning header; else the last non-empty line (as the original).
     The reasoning is the text without the question.
"""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Iterator

from .rows import MAX_REPORTED, DataError, Row, check_row, load_rows, read_utf8

TARGET_COLUMNS = ("similarity_with_penalty", "sbert_similarity", "target")
REQUIRED = {"sql": str, "reasoning": str, "predicted_nl": str}

SCORE_SYSTEM_PROMPT = """You check whether a question written from a SQL query asks what the query computes.
You are given the SQL query, the reasoning that led to the question, and the question.
Think step by step, then give a score between 0 and 1: 1 when the question asks exactly what the query
computes (same tables, columns, conditions and aggregation), 0 when it asks something else.
Respond in the following format:
<think>
...
</think>
<score>
0.00
</score>"""

GENERATION_SYSTEM_PROMPT = """You explain SQL queries. Reason step by step about what the query computes:
the tables, the columns, the conditions and any aggregation. Then write the one-sentence question
in plain English that the query answers.
Respond in the following format:
<reasoning>
...
</reasoning>
<question>
...
</question>"""

_QUESTION = re.compile(r"<question>(.*?)</question>", re.S | re.I)
_HEADER = ("step", "reasoning", "think:", "analysis:", "conclusion:")


# ------------------------------------------------------------------------------------- reading
def _csv_items(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        text = read_utf8(path)  # UTF-16 or a non-UTF-8 byte: an error at its line (grpo.data.rows [D5])
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2
    try:
        for row in reader:
            yield f"{path}:{start}", row  # [D1]
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({e})") from None
    if start == 2:  # no record: an empty file or a header only (grpo.data.rows [D6])
        raise DataError(f"{path}: no rows: the file is empty" if not text.strip() else
                        f"{path}: no rows: the file has a header line and no records")


def _with_target(row: Row, where: str = "") -> Row:
    """`row` with its target as a float [D2]; a ValueError (load_rows adds the location) if invalid."""
    prefix = f"{where}: " if where else ""
    key = next((k for k in TARGET_COLUMNS if row.get(k) not in (None, "")), None)
    if key is None:
        raise DataError(f"{prefix}no target: one of {', '.join(TARGET_COLUMNS)} is needed")
    value = row[key]
    try:
        target = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, AttributeError, OverflowError):  # OverflowError: int beyond float range
        target = math.nan
    if isinstance(value, bool) or not (math.isfinite(target) and 0.0 <= target <= 1.0):  # [D2]
        raise DataError(f"{prefix}{key} must be a number in [0, 1], got {_shown(value)}")
    return {**row, "similarity_with_penalty": target, "target": target}


def _shown(value) -> str:
    """`value` for an error message, long integers and texts shortened [D2]."""
    if isinstance(value, int) and not isinstance(value, bool) and not -10 ** 20 < value < 10 ** 20:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # Python will not write an integer of more than 4300 digits
            return "an integer of more than 4300 digits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}… ({len(text)} characters)"


def load_score_rows(source: str | Path, limit: int | None = None) -> list[Row]:
    """Rows of a score-model dataset (module docstring) from a .csv, .jsonl/.json file or folder.

    Raises:
        DataError naming "file:line" of every row without the required text columns or a valid
        target [D1] [D2].
    """
    path = Path(source).expanduser()
    if path.suffix.lower() != ".csv":
        return load_rows(path, required=REQUIRED, limit=limit, parse=_with_target)  # locations by load_rows
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows, problems = [], []
    for where, item in _csv_items(path):
        if limit is not None and len(rows) >= limit:
            break
        try:
            rows.append(_with_target(check_row(item, where, required=REQUIRED), where))
        except DataError as e:
            problems.append(str(e))
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{len(problems)} bad row(s) in {path}:\n  {shown}{more}")
    return rows


# ------------------------------------------------------------------------------------- prompts
def score_user_prompt(row: Row) -> str:
    return f"SQL: {row['sql']}\n\nReasoning: {row['reasoning']}\n\nQuestion: {row['predicted_nl']}"


def to_score_prompts(rows: list[Row], *, system_prompt: str = SCORE_SYSTEM_PROMPT) -> list[Row]:
    """System A rows: `{"prompt": [system, user], "prompt_suffix": "", "target": float, **columns}`."""
    return [{**r, "prompt": [{"role": "system", "content": system_prompt},
                             {"role": "user", "content": score_user_prompt(r)}],
             "prompt_suffix": ""} for r in rows]


def generation_prompt(sql: str) -> list[dict[str, str]]:
    """Chat messages asking a policy for reasoning + a one-sentence question about `sql`."""
    return [{"role": "system", "content": GENERATION_SYSTEM_PROMPT}, {"role": "user", "content": f"SQL: {sql}"}]


def split_generation(text: str) -> tuple[str, str]:
    """(reasoning, question) of a generation [D3]; both stripped, the question on one line."""
    m = _QUESTION.search(text)
    if m:
        question, reasoning = m.group(1), text[:m.start()] + text[m.end():]
    else:
        lines = [line for line in text.strip().split("\n")]
        index = next((i for i in reversed(range(len(lines))) if "question:" in lines[i].lower()), None)
        if index is not None:
            question = re.split("question:", lines[index], maxsplit=1, flags=re.I)[1]
        else:
            filled = [i for i, line in enumerate(lines) if line.strip()]
            plain = [i for i in filled if len(lines[i].strip()) > 10
                     and not any(h in lines[i].lower() for h in _HEADER)]
            index = (plain or filled or [None])[-1]
            question = lines[index] if index is not None else ""
        reasoning = "\n".join(line for i, line in enumerate(lines) if i != index)
    reasoning = re.sub(r"</?reasoning>", "", reasoning, flags=re.I)
    return reasoning.strip(), " ".join(question.split())


# ------------------------------------------------------------------------------------- evaluation
def regression_metrics(preds: list[float | None], targets: list[float]) -> dict[str, float | int | None]:
    """Invalid count, and MSE / MAE / RMSE of the valid predictions against their targets.

    A prediction is invalid when it is None (no `<think>`, no parsable score, or outside [0, 1]).
    With e_i = x_i − t_i over the n valid ones: MSE = Σe²/n, MAE = Σ|e|/n, RMSE = √MSE; None when n = 0.
    """
    assert len(preds) == len(targets), "one prediction per target"
    errors = [p - t for p, t in zip(preds, targets) if p is not None]
    n = len(errors)
    mse = sum(e * e for e in errors) / n if n else None
    return {"num_examples": len(preds), "num_valid": n, "num_invalid": len(preds) - n,
            "invalid_rate": (len(preds) - n) / len(preds) if preds else 0.0,
            "mse": mse, "mae": sum(abs(e) for e in errors) / n if n else None,
            "rmse": math.sqrt(mse) if mse is not None else None}
