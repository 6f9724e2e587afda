"""Answer-correctness rewards for GSM8K-style math (REWARDS.md B), and better options beside them.

Column: `answer`, the gold final answer (GSM8K's text after "####"; a full GSM8K solution is also
read correctly by the improved rewards). Original scorings, kept exactly:

    check_answer    B's answer from `solution_answer` vs gold: exact / stripped / ratio bands [D5]
    check_numbers   the upstream notebook's: first number after `<SOLUTION>` vs float(gold)

Better options (ours): `check_answer_strict` (check_answer only on `match_format_exactly`'s layout [D5]),
`check_numbers_robust` (same scale as check_numbers, numbers read with commas, currency, percents,
fractions and a tolerance) and `numeric_correctness` (1.0/0.0 on any tag scheme).

Implementation details:
[D1] Python's float() semantics are part of the originals: float() accepts " 12 ", "1_000", "nan",
     "inf" and non-ASCII digits ("٣٤" = 34); ratios with nan or inf fall in no band (−2.5); a zero gold
     makes the ratio fail like a non-number (−4.5), as the original's bare `except` did.
[D2] check_numbers' "first number" is the leftmost run of `-?[\\d.,]+` after the first `<SOLUTION>` (the
     original regex `<SOLUTION>.*?\\s*(-?[\\d.,]+)` finds the same run, see tests): "Well, 42" reads ","
     and scores 0 (not parseable), as upstream. The gold is float(gold.strip()) with its commas kept,
     so a gold "1,200" always scores 0 (upstream behaviour; 93 GSM8K answers have such commas).
[D3] A row whose gold is None gets None (not applicable), for every reward here.
[D4] A gold that still holds a whole GSM8K solution ("… #### 72") is cut to "72" first; the originals
     always received the cut answer, so this changes nothing for them and saves a silent all-zero run.
[D5] check_answer's guess is `match_format_exactly`'s regex *without* its end anchor, as the original
     (REWARDS.md B): "…<SOLUTION>42</SOLUTION>\\nI hope this helps!" reads "42" and scores 5.0. Until
     issue #13 (item 2) this library required `</SOLUTION>` to end the completion (−2.0 there); that
     stricter reading is kept, under its own name, as check_answer_strict.
"""
from __future__ import annotations

import re

from rewards.formats import solution_answer, solution_block
from rewards.inputs import column, completion_text, gold_text
from rewards.numbers import extract_answer, gold_number, gsm8k_answer, last_number, same_number

_FIRST_RUN = re.compile(r"-?[\d.,]+")  # [D2] \d as upstream: any Unicode digit


def gold_answers(completions, columns, reward: str) -> list[str | None]:
    """The `answer` column as text [D3]; a full GSM8K solution is cut to its text after "####" [D4]."""
    golds = [gold_text(a) for a in column(columns, "answer", len(completions), reward=reward)]
    return [gsm8k_answer(g) if g is not None and "####" in g else g for g in golds]


def check_answer(prompts, completions, **columns) -> list[float | None]:
    """B's answer reward (original). guess = `solution_answer(completion)` [D5], true = the `answer` column.

    | case (first that applies)                                   | reward |
    |-------------------------------------------------------------|--------|
    | no `<end_working_out>`…`<SOLUTION>`x`</SOLUTION>` (x ≥ 1 char; text may follow) | −2.0 |
    | guess == true                                               | +5.0   |
    | guess.strip() == true.strip()                               | +3.5   |
    | ratio = float(guess)/float(true) with 0.9 ≤ ratio ≤ 1.1      | +2.0   |
    | 0.8 ≤ ratio ≤ 1.2                                           | +1.5   |
    | other ratio (also nan, inf)                                 | −2.5   |
    | guess or true not a float, or true = 0 [D1]                 | −4.5   |

    The guess is the first block after `<end_working_out>`, up to its first `</SOLUTION>`.
    """
    return [None if true is None else _check_answer(solution_answer(completion_text(c)), true)
            for c, true in zip(completions, gold_answers(completions, columns, "check_answer"))]


def check_answer_strict(prompts, completions, **columns) -> list[float | None]:
    """check_answer on `match_format_exactly`'s layout only (ours; this library's check_answer before
    issue #13). guess = `solution_block(completion)`: `</SOLUTION>` must end the completion [D5].

    | case (first that applies)                                   | reward |
    |-------------------------------------------------------------|--------|
    | not match_format_exactly's layout (e.g. text after `</SOLUTION>`) | −2.0 |
    | guess == true                                               | +5.0   |
    | guess.strip() == true.strip()                               | +3.5   |
    | ratio = float(guess)/float(true) with 0.9 ≤ ratio ≤ 1.1      | +2.0   |
    | 0.8 ≤ ratio ≤ 1.2                                           | +1.5   |
    | other ratio (also nan, inf)                                 | −2.5   |
    | guess or true not a float, or true = 0 [D1]                 | −4.5   |

    The guess runs from the first `<SOLUTION>` after `<end_working_out>` to the final `</SOLUTION>`, so
    two solution blocks make one guess with tags inside it (−4.5), as the anchored regex reads them.
    """
    return [None if true is None else _check_answer(solution_block(completion_text(c)), true)
            for c, true in zip(completions, gold_answers(completions, columns, "check_answer_strict"))]


def _check_answer(guess: str | None, true: str) -> float:
    if guess is None:
        return -2.0
    if guess == true:
        return 5.0
    if guess.strip() == true.strip():
        return 3.5
    try:
        ratio = float(guess) / float(true)  # [D1]
    except (ValueError, ZeroDivisionError, OverflowError):
        return -4.5
    if 0.9 <= ratio <= 1.1:
        return 2.0
    if 0.8 <= ratio <= 1.2:
        return 1.5
    return -2.5


def check_numbers(prompts, completions, **columns) -> list[float | None]:
    """B's number reward (the upstream notebook's original).

    | case (first that applies)                                                  | reward |
    |----------------------------------------------------------------------------|--------|
    | no `<SOLUTION>`, or no run of `-?[\\d.,]+` after it                         | −2.5   |
    | float(run without commas) or float(true.strip()) fails [D2]                | 0.0    |
    | the two floats are equal                                                   | +3.5   |
    | they differ                                                                | −1.5   |
    """
    return [None if true is None else _check_numbers(completion_text(c), true)
            for c, true in zip(completions, gold_answers(completions, columns, "check_numbers"))]


def _check_numbers(text: str, true: str) -> float:
    start = text.find("<SOLUTION>")
    run = None if start < 0 else _FIRST_RUN.search(text, start + len("<SOLUTION>"))
    if run is None:
        return -2.5
    try:
        return 3.5 if float(run.group().replace(",", "")) == float(true.strip()) else -1.5
    except ValueError:
        return 0.0


def check_numbers_robust(prompts, completions, **columns) -> list[float | None]:
    """check_numbers on the same scale, reading numbers properly (ours).

    The answer is the last number of the last `<SOLUTION>` block (see `rewards.numbers`: commas,
    currency, percents, fractions, units; tolerance 1e-6 relative). The gold may be "1,200" or a whole
    GSM8K solution with "####".

    | case                                                        | reward |
    |-------------------------------------------------------------|--------|
    | no `<SOLUTION>` or no number in its block                   | −2.5   |
    | the number equals the gold number                           | +3.5   |
    | it differs                                                  | −1.5   |
    | the gold has no number                                      | None   |
    """
    out = []
    for c, true in zip(completions, gold_answers(completions, columns, "check_numbers_robust")):
        gold = None if true is None else gold_number(true)
        text = completion_text(c)
        start = text.rfind("<SOLUTION>")
        guess = None if start < 0 else last_number(text[start:].split("</SOLUTION>", 1)[0])
        out.append(None if gold is None else -2.5 if guess is None
                   else 3.5 if same_number(guess, gold) else -1.5)
    return out


def numeric_correctness(prompts, completions, **columns) -> list[float | None]:
    """Numeric answer correctness on any tag scheme (ours).

    The answer is the last number in the last `<answer>` block, else the last `<SOLUTION>` block,
    else the last `\\boxed{}`, else the whole completion (`rewards.numbers.answer_region`).

    | case                                                        | reward |
    |-------------------------------------------------------------|--------|
    | the answer equals the gold number (commas, $, %, fractions, tolerance 1e-6 relative) | 1.0 |
    | no number, or a different number                            | 0.0    |
    | the gold has no number                                      | None   |
    """
    out = []
    for c, true in zip(completions, gold_answers(completions, columns, "numeric_correctness")):
        gold = None if true is None else gold_number(true)
        guess = extract_answer(completion_text(c))
        out.append(None if gold is None else float(guess is not None and same_number(guess, gold)))
    return out


def accuracy_match(extracted: str | None, gold: str | None, *, tol: float = 1e-6) -> bool:
    """B's evaluation Accuracy rule for one example (REWARDS.md B, "Metrics").

    True when both parse as floats after removing commas and differ by at most `tol`; when either does
    not parse, when the stripped strings are equal.
    """
    if extracted is None or gold is None:
        return False
    try:
        return abs(float(extracted.replace(",", "")) - float(gold.replace(",", ""))) <= tol
    except ValueError:
        return extracted.strip() == gold.strip()
