"""Reading a math answer out of a completion and comparing it with the gold answer as numbers.

    "$1,234.50"  → 1234.5        "3/4" → 3/4         "−7" / "-7" → −7        "25%" → 25 (percent)
    "18 apples." → 18            "1,2345" → 1 and 2345 (not a thousands group)

Implementation details:
[D1] ASCII digits only; a number is `[sign][currency]digits[,ddd…][.digits][ / digits][%]`; no exponents
     ("1e5" reads as 1). It must not continue a word or another number ("x2", ".5.3").
[D2] Values are exact `Fraction`s, so "0.1" and "1/10" are equal without rounding; tokens longer
     than 64 characters are not numbers (bounds the cost of a 1 MB run of digits).
[D3] A percent "25%" equals the gold 25 and the gold 0.25 (the question may ask "what percent").
[D4] Tolerance: |a − b| ≤ max(abs_tol, rel_tol·max(|a|, |b|)), rel_tol = 1e-6, abs_tol = 1e-9, in
     exact arithmetic; GSM8K answers are integers, so this only forgives "18.0000001"-style output.
[D5] GSM8K's gold answer is the text after "####" (upstream `extract_hash_answer`: the piece between
     the first and any second "####", stripped). It is not otherwise normalised: 93 of GSM8K's 8,792
     answers contain a thousands comma ("1,200"), which string-comparing rewards then require.
[D6] A minus sign touches its number ("-18", "-$18"): in "Total - 18" the dash is punctuation and the
     number is 18 (it was read as −18, so a correct answer scored as wrong).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

REL_TOL = 1e-6
ABS_TOL = 1e-9
_MAX_TOKEN = 64  # [D2]

_NUMBER = re.compile(
    r"(?<![\w.])"                                      # [D1] not inside a word or a number
    r"(?P<neg>[-−])?(?:[$€£¥]\s?)?"                    # sign, currency; a space only after a currency [D6]
    r"(?P<num>(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:\s*/\s*(?P<den>[0-9]+))?"                     # fraction 3/4
    r"(?P<pct>\s?%)?")
_BRACE = re.compile(r"[{}]")


@dataclass(frozen=True)
class Number:
    """A number read from text: its exact value and whether it was written as a percent."""
    value: Fraction
    percent: bool = False


def _parse(match: re.Match) -> Number | None:
    if match.end() - match.start() > _MAX_TOKEN:  # [D2]
        return None
    value = Fraction(match["num"].replace(",", ""))
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value /= int(match["den"])
    return Number(-value if match["neg"] else value, match["pct"] is not None)


def numbers_in(text: str) -> list[Number]:
    """Every number in `text`, in order [D1]."""
    return [n for n in map(_parse, _NUMBER.finditer(text)) if n is not None]


def first_number(text: str) -> Number | None:
    """The first number in `text`, or None."""
    for match in _NUMBER.finditer(text):
        number = _parse(match)
        if number is not None:
            return number
    return None


def last_number(text: str) -> Number | None:
    """The last number in `text`, or None (only that one is converted: linear in len(text))."""
    last = None
    for match in _NUMBER.finditer(text):
        if match.end() - match.start() <= _MAX_TOKEN and (match["den"] is None or int(match["den"]) != 0):
            last = match
    return None if last is None else _parse(last)


def numbers_close(a: Fraction, b: Fraction, *, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """|a − b| ≤ max(abs_tol, rel_tol·max(|a|, |b|)), exactly [D4]."""
    return abs(a - b) <= max(Fraction(abs_tol), Fraction(rel_tol) * max(abs(a), abs(b)))


def same_number(pred: Number, gold: Number, *, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """Whether two numbers agree, a percent also read as its fraction of 100 [D3]."""
    preds = {pred.value} | ({pred.value / 100} if pred.percent else set())
    golds = {gold.value} | ({gold.value / 100} if gold.percent else set())
    return any(numbers_close(p, g, rel_tol=rel_tol, abs_tol=abs_tol) for p in preds for g in golds)


def gsm8k_answer(solution: str) -> str | None:
    """GSM8K gold answer: the text after "####", stripped; None without "####" [D5]."""
    if not isinstance(solution, str) or "####" not in solution:
        return None
    return solution.split("####")[1].strip()


def gold_number(gold: str) -> Number | None:
    """The gold answer as a number: after "####" when present, else the last number in it."""
    return last_number(gsm8k_answer(gold) or gold)


def answer_region(text: str) -> str:
    """Where a completion states its final answer, first found of:

    1. the last `<answer>` block (to its `</answer>`, or to the end when truncated);
    2. the last `<SOLUTION>` block (likewise);
    3. the last `\\boxed{…}` (braces matched);
    4. the whole text.
    """
    for open_tag, close_tag in (("<answer>", "</answer>"), ("<SOLUTION>", "</SOLUTION>")):
        i = text.rfind(open_tag)
        if i >= 0:
            j = text.find(close_tag, i)
            return text[i + len(open_tag):] if j < 0 else text[i + len(open_tag):j]
    i = text.rfind("\\boxed{")
    if i >= 0:
        depth, start = 0, i + len("\\boxed{")
        for brace in _BRACE.finditer(text, start):
            depth += 1 if brace.group() == "{" else -1
            if depth < 0:
                return text[start:brace.start()]
        return text[start:]
    return text


def extract_answer(text: str) -> Number | None:
    """The completion's final numeric answer: the last number of its `answer_region`."""
    return last_number(answer_region(text))
