"""The `drill` task: bare arithmetic in five difficulty levels, with held-out problems that training never sees.

Why it exists (issue #18): GRPO can only push what varies inside a group. On the word problems of the
default task the base smollm2-135m is right about 1 time in 100, so nearly every group is all-wrong and
the run learns the layout, not the answers. On bare calculations ("7 + 8 =") the same model is right
about a third of the time on one-digit sums and products and rarely beyond, so correctness varies
within groups at every level. Measured on the base model (greedy, the held-out split; see
docs/recipes.md "Drill"):

    level  problems                      space   held out
    1      a + b,   a, b in 0..9           100     40
    2      a * b,   a, b in 1..9            81     32
    3      a + b,   a in 10..99, b in 1..9  810     50
    4      a - b,   a in 10..99, b in 1..9  810     50
    5      a + b,   a, b in 10..99        8100     50

The prompt is a system message and the bare expression ("37 + 5 ="); the reward is
`numeric_correctness`: the last number of the reply equals the result (so "37 + 5 = 42" and "The
answer is 42." both count, and writing more numbers after the answer does not).

Implementation details:
    [D1] The split is by problem, not by row: each level's whole problem space is shuffled by
         `random.Random(seed)` and the first `HELD_OUT[level]` problems are the test split; the train
         split draws (with repetition, levels in turn) only from the rest. No test problem — as an
         ordered pair with its operator — ever appears in training (tests/test_data_drill.py).
    [D2] Deterministic and generated on the fly (no file): the same seed gives the same rows on every
         machine; no global RNG is touched.
    [D3] Rows carry `level` (int) and `answer` (the result as text); an evaluation reports its rates per
         level from the `level` column (scripts/eval_grpo.py, the trainer's `eval_steps`).
"""
from __future__ import annotations

import random

from .rows import Row

SYSTEM_PROMPT = "You are a careful calculator. Reply with the result."
SEED = 0
TRAIN_ROWS = 2000  # levels in turn: 400 rows each
HELD_OUT = {1: 40, 2: 32, 3: 50, 4: 50, 5: 50}  # 222 test problems
LEVELS = {  # level: (description, problem space as (a, op, b) triples)
    1: ("a + b, one digit each", [(a, "+", b) for a in range(10) for b in range(10)]),
    2: ("a * b, one digit each", [(a, "*", b) for a in range(1, 10) for b in range(1, 10)]),
    3: ("a + b, two digits + one", [(a, "+", b) for a in range(10, 100) for b in range(1, 10)]),
    4: ("a - b, two digits - one", [(a, "-", b) for a in range(10, 100) for b in range(1, 10)]),
    5: ("a + b, two digits each", [(a, "+", b) for a in range(10, 100) for b in range(10, 100)]),
}
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _row(level: int, a: int, op: str, b: int) -> Row:
    question = f"{a} {op} {b}"
    return {"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"{question} ="}],
            "question": question, "answer": str(_OPS[op](a, b)), "level": level}


def split_problems(seed: int = SEED) -> dict[str, dict[int, list[tuple[int, str, int]]]]:
    """{"train": {level: problems}, "test": {level: problems}}: disjoint, the test part first [D1]."""
    out: dict[str, dict[int, list[tuple[int, str, int]]]] = {"train": {}, "test": {}}
    for level, (_, space) in LEVELS.items():
        problems = list(space)
        random.Random(seed * 1000 + level).shuffle(problems)
        out["test"][level], out["train"][level] = problems[:HELD_OUT[level]], problems[HELD_OUT[level]:]
    return out


def drill_rows(split: str, *, seed: int = SEED, limit: int | None = None) -> list[Row]:
    """The rows of `split`, levels in turn ("train": `TRAIN_ROWS` rows; "test": every held-out problem)."""
    parts = split_problems(seed)
    if split not in parts:
        raise ValueError(f"split {split!r}: the drill task has the splits train and test")
    if split == "test":  # levels in turn while they last, so that a `limit` keeps every level
        queues = {level: list(problems) for level, problems in parts["test"].items()}
        rows = []
        while any(queues.values()):
            rows += [_row(level, *q.pop(0)) for level, q in queues.items() if q]
    else:
        r = random.Random(seed)
        levels = list(LEVELS)
        rows = [_row(levels[i % len(levels)], *r.choice(parts["train"][levels[i % len(levels)]]))
                for i in range(TRAIN_ROWS)]
    return rows if limit is None else rows[:limit]
