"""The bundled default task: arithmetic word problems with GSM8K-style answers (`... #### 42`).

Why it exists: the main training job must run without a download, and a 135M-parameter instruct model
solves almost no real GSM8K problem, so GRPO would see all-zero rewards and learn nothing. These
problems use one or two operations on 1–2 digit numbers, easy enough for such a model to be right
sometimes, which is what a group-relative advantage needs.

Rows have the GSM8K format plus the parsed fields of `grpo.data.gsm8k`:
    {"question": str, "answer": "… 12 + 7 = <<12+7=19>>19 …\\n#### 19", "gold": "19", "cot": str}
so every GSM8K prompt builder and reward applies unchanged. `sample_problems` also returns the
structured `Problem`s, from which `sega.data` renders reasoned and flawed answers for preference pairs.

Implementation details:
    [D1] Deterministic: one `random.Random(seed)` drives everything; no global RNG is touched. The same
         (n, seed) gives the same rows on every machine; CPython has kept `randint`/`choice` stable for
         an int seed, and tests/test_data_arithmetic.py compares the bundled files with the generator,
         so a change would be caught rather than silently produce different files.
    [D2] Questions within one call are unique (duplicates are redrawn), so the bundled test split, taken
         from the same call as the train split, never repeats a train question.
    [D3] Every intermediate and final value is a positive integer: subtractions draw the smaller
         operand below the larger, divisions build the dividend as divisor · quotient.
    [D4] One-operation templates are drawn twice as often as two-operation ones (easy problems first).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .rows import Row

BUNDLED_DIR = Path(__file__).parent  # arithmetic_{train,test}.jsonl, written by scripts/make_default_task.py
BUNDLED_SEED = 0
BUNDLED_SIZES = {"train": 2000, "test": 200}  # [D2] test = the last 200 rows of one call

OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
       "/": lambda x, y: x // y}
NAMES = ("Mia", "Sam", "Lena", "Omar", "Ava", "Ben", "Kai", "Zoe", "Ivan", "Nora", "Leo", "Ruth",
         "Tariq", "Emma", "Jon", "Priya", "Hugo", "Lucy", "Mateo", "Chen")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells", "coins",
         "balloons", "stamps", "beads")
BOXES = ("boxes", "bags", "baskets", "jars", "packs", "crates")


@dataclass(frozen=True)
class Step:
    """One arithmetic step `x op y`; an operand is an int or a 0-based index ("#0") of an earlier step."""
    lead: str   # text before the equation, e.g. "Mia now has"
    x: int | str
    op: str
    y: int | str
    tail: str   # text after the result, e.g. "apples"


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[Step, ...]

    def values(self, slips: dict[int, int] | None = None, ops: dict[int, str] | None = None) -> list[int]:
        """Result of every step; `slips[k]` adds an error to step k, `ops[k]` swaps its operator.

        Later steps use the (possibly wrong) earlier results, as a person who slipped would.
        """
        out: list[int] = []
        for k, s in enumerate(self.steps):
            x, y = (out[int(v[1:])] if isinstance(v, str) else v for v in (s.x, s.y))
            op = (ops or {}).get(k, s.op)
            out.append(OPS[op](x, y) + (slips or {}).get(k, 0))
        return out

    @property
    def gold(self) -> int:
        return self.values()[-1]

    def equations(self, slips: dict[int, int] | None = None, ops: dict[int, str] | None = None
                  ) -> list[tuple[str, int, str, int, int, str]]:
        """`(lead, x, op, y, result, tail)` per step, with operands resolved to numbers."""
        vals = self.values(slips, ops)
        out = []
        for k, s in enumerate(self.steps):
            x, y = (vals[int(v[1:])] if isinstance(v, str) else v for v in (s.x, s.y))
            out.append((s.lead, x, (ops or {}).get(k, s.op), y, vals[k], s.tail))
        return out

    def row(self) -> Row:
        """The GSM8K-format row: calculator annotations `<<x+y=z>>` as in GSM8K, then `#### gold`."""
        lines = [f"{lead} {x} {op} {y} = <<{x}{op}{y}={r}>>{r} {tail}."
                 for lead, x, op, y, r, tail in self.equations()]
        cot = "\n".join(f"{lead} {x} {op} {y} = {r} {tail}." for lead, x, op, y, r, tail in self.equations())
        return {"question": self.question, "answer": "\n".join(lines) + f"\n#### {self.gold}",
                "gold": str(self.gold), "cot": cot}


# Templates: rng -> Problem. Names/items are drawn inside, so each template covers many questions.
def _add(r: random.Random) -> Problem:
    n, it, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 60), r.randint(2, 39)
    return Problem(f"{n} has {a} {it}. {n} gets {b} more {it}. How many {it} does {n} have now?",
                   (Step(f"{n} now has", a, "+", b, it),))


def _sub(r: random.Random) -> Problem:
    n, it, a = r.choice(NAMES), r.choice(ITEMS), r.randint(10, 99)
    b = r.randint(1, a - 1)  # [D3]
    return Problem(f"{n} had {a} {it} and gave {b} of them to a friend. How many {it} does {n} have left?",
                   (Step(f"{n} has", a, "-", b, f"{it} left"),))


def _mul(r: random.Random) -> Problem:
    it, box, a, b = r.choice(ITEMS), r.choice(BOXES), r.randint(2, 9), r.randint(2, 12)
    return Problem(f"There are {a} {box} with {b} {it} in each. How many {it} are there in total?",
                   (Step("In total there are", a, "*", b, it),))


def _div(r: random.Random) -> Problem:
    n, it, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 9)
    q = r.randint(2, min(12, 99 // b))  # the dividend stays at two digits
    return Problem(f"{n} shares {b * q} {it} equally among {b} friends. "  # [D3]
                   f"How many {it} does each friend get?",
                   (Step("Each friend gets", b * q, "/", b, it),))


def _add_sub(r: random.Random) -> Problem:
    n, it, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(5, 50), r.randint(2, 30)
    c = r.randint(1, a + b - 1)
    return Problem(f"{n} has {a} {it}, buys {b} more and then gives away {c}. "
                   f"How many {it} does {n} have now?",
                   (Step(f"After buying, {n} has", a, "+", b, it),
                    Step(f"After giving some away, {n} has", "#0", "-", c, it)))


def _mul_add(r: random.Random) -> Problem:
    n, it, a, b, c = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 9), r.randint(2, 12), r.randint(1, 30)
    return Problem(f"{n} already had {c} {it} and buys {a} packs with {b} {it} in each pack. "
                   f"How many {it} does {n} have now?",
                   (Step("The packs hold", a, "*", b, it), Step(f"{n} now has", "#0", "+", c, it)))


def _mul_sub(r: random.Random) -> Problem:
    n, it, box, a, b = r.choice(NAMES), r.choice(ITEMS), r.choice(BOXES), r.randint(2, 9), r.randint(2, 12)
    c = r.randint(1, a * b - 1)
    return Problem(f"{n} fills {a} {box} with {b} {it} each and then uses {c} of the {it}. "
                   f"How many {it} are left?",
                   (Step(f"{n} fills", a, "*", b, it), Step("There are", "#0", "-", c, f"{it} left")))


def _change(r: random.Random) -> Problem:
    n, price, k = r.choice(NAMES), r.randint(2, 12), r.randint(2, 5)
    bill = 50 if price * k < 50 else 100
    return Problem(f"A notebook costs ${price}. {n} buys {k} notebooks and pays with a ${bill} bill. "
                   f"How many dollars of change does {n} get?",
                   (Step("The notebooks cost", price, "*", k, "dollars"),
                    Step(f"{n} gets", bill, "-", "#0", "dollars of change")))


def _ages(r: random.Random) -> Problem:
    n, m, a, b, c = r.choice(NAMES), r.choice(NAMES), r.randint(5, 40), r.randint(2, 30), r.randint(2, 20)
    while m == n:
        m = r.choice(NAMES)
    return Problem(f"{n} is {a} years old. {m} is {b} years older than {n}. "
                   f"How old will {m} be in {c} years?",
                   (Step(f"{m} is", a, "+", b, "years old now"),
                    Step(f"In {c} years {m} will be", "#0", "+", c, "years old")))


def _bags(r: random.Random) -> Problem:
    n, it, c, q = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 6), r.randint(2, 10)
    a = r.randint(1, c * q - 1)
    return Problem(f"{n} has {a} red {it} and {c * q - a} blue {it} and puts them equally into {c} bags. "
                   f"How many {it} go in each bag?",
                   (Step(f"{n} has", a, "+", c * q - a, f"{it} in all"),
                    Step("Each bag gets", "#0", "/", c, it)))


ONE_STEP = (_add, _sub, _mul, _div)
TWO_STEP = (_add_sub, _mul_add, _mul_sub, _change, _ages, _bags)
TEMPLATES = ONE_STEP + ONE_STEP + TWO_STEP  # [D4]


def sample_problems(n: int, seed: int) -> list[Problem]:
    """`n` distinct problems [D2], deterministic in `seed` [D1]."""
    assert n >= 0, f"n must be >= 0, got {n}"
    rng = random.Random(seed)  # [D1]
    seen: set[str] = set()
    out: list[Problem] = []
    for _ in range(100 * n + 100):  # redraw duplicates [D2]; the template space is far larger than n
        if len(out) == n:
            break
        p = rng.choice(TEMPLATES)(rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    assert len(out) == n, f"could only draw {len(out)} distinct problems, asked for {n}"
    return out


def arithmetic_task(n: int, seed: int = BUNDLED_SEED) -> list[Row]:
    """`n` GSM8K-format rows `{"question", "answer", "gold", "cot"}`, deterministic in `seed`."""
    return [p.row() for p in sample_problems(n, seed)]


def bundled_rows(split: str) -> list[Row]:
    """The rows of `arithmetic_{split}.jsonl` as `load_gsm8k("arithmetic", split)` returns them (the file,
    written by scripts/make_default_task.py, stores only `question` and `answer`)."""
    assert split in BUNDLED_SIZES, f"split must be one of {sorted(BUNDLED_SIZES)}, got {split!r}"
    rows = arithmetic_task(sum(BUNDLED_SIZES.values()), BUNDLED_SEED)
    return rows[:BUNDLED_SIZES["train"]] if split == "train" else rows[BUNDLED_SIZES["train"]:]
