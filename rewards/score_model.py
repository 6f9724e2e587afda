"""Score-regression rewards of the CoT-filtering score model (REWARDS.md A).

The policy reads (SQL, reasoning, question) and answers `<think>…</think><score>x</score>`; x should
predict the example's target t = `similarity_with_penalty` ∈ [0, 1]. With e = |x − t|:

    score_exp        r = clamp(2·exp(−2·e) − 1, −1, 1)   e = 0, 0.1, 0.5, 1 → 1, 0.64, −0.26, −0.73
    score_quadratic  r = clamp(1 − 2·e², −1, 1)           e = 0, 0.1, 0.5, 1 → 1, 0.98, 0.5, −1

| symbol | code      |
|--------|-----------|
| x      | `pred`    (`rewards.formats.read_score`) |
| t      | `target`  (column `similarity_with_penalty`, alias `sbert_similarity` or `target`) |

Implementation details:
[D1] Invalid output scores −1.0, the lowest value of both curves: no `<think>` tag, no `</think>`
     after it (both in any case, as the original), no `<score>…</score>` block after the `</think>`
     holding exactly one decimal number (a score inside the thinking does not count), or x outside
     [0, 1] (REWARDS.md A; issue #13 item 6(c)).
[D2] The target may arrive as a number or as text ("0.42", from a CSV); a row whose target is missing
     or not a finite number gets None (not applicable). It is not clipped: targets are built in [0, 1].
     A number beyond float range (1e400, a 400-digit integer) is "not a finite number" too: it used to
     raise OverflowError (issue #13 item 6(d)). The issue asks for a data error naming the row; the
     loader (`grpo.data.score_model.load_score_rows`) reports it so, while a reward never raises on a
     column value (tests/test_rewards_fuzz.py) and has no row location to name, so here it is None.
[D3] The exp curve is the one the original trained with; the quadratic one appears in its docs.
     Near e = 0 the quadratic is flat (gradient-free among close guesses), the exp one is not.
"""
from __future__ import annotations

import math

from rewards.formats import read_score
from rewards.inputs import column, completion_text

_TARGET_COLUMNS = ("similarity_with_penalty", ("sbert_similarity", "target"))


def _target(value) -> float | None:  # [D2]
    if isinstance(value, bool):
        return None
    try:
        t = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        return None
    return t if math.isfinite(t) else None


def _scores(completions, columns, reward: str, curve) -> list[float | None]:
    name, aliases = _TARGET_COLUMNS
    targets = column(columns, name, len(completions), reward=reward, aliases=aliases)
    out = []
    for c, value in zip(completions, targets):
        target, pred = _target(value), read_score(completion_text(c))
        out.append(None if target is None else -1.0 if pred is None  # [D1]
                   else min(1.0, max(-1.0, curve(abs(pred - target)))))
    return out


def score_exp(prompts, completions, **columns) -> list[float | None]:
    """A's reward (original): clamp(2·exp(−2·|x − t|) − 1, −1, 1).

    | case                                                              | reward                |
    |-------------------------------------------------------------------|-----------------------|
    | no `<think>`…`</think>` (any case), no parsable `<score>` after it, or x outside [0, 1] | −1.0 |
    | valid x, error e = |x − t|                                        | 2·exp(−2e) − 1        |
    | e = 0 / 0.1 / 0.5 / 1                                             | 1 / 0.637 / −0.264 / −0.729 |
    | target missing, not a number, or not finite as a float (1e400)    | None                  |
    """
    return _scores(completions, columns, "score_exp", lambda err: 2.0 * math.exp(-2.0 * err) - 1.0)


def score_quadratic(prompts, completions, **columns) -> list[float | None]:
    """A's quadratic variant (original docs): clamp(1 − 2·(x − t)², −1, 1).

    | case                                                              | reward                |
    |-------------------------------------------------------------------|-----------------------|
    | no `<think>`…`</think>` (any case), no parsable `<score>` after it, or x outside [0, 1] | −1.0 |
    | valid x, error e = |x − t|                                        | 1 − 2e²               |
    | e = 0 / 0.1 / 0.5 / 1                                             | 1 / 0.98 / 0.5 / −1   |
    | target missing, not a number, or not finite as a float (1e400)    | None                  |
    """
    return _scores(completions, columns, "score_quadratic", lambda err: 1.0 - 2.0 * err * err)
