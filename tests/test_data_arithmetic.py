"""The generated data: the default arithmetic task and the SEGA preference pairs built on it.

Correctness is checked with `solve`, an independent solver written here from the question wording
alone (it shares no code with the generator), plus a check of every equation written in an answer.
"""
import json
import re

import pytest

from grpo.data import arithmetic_task, load_gsm8k
from grpo.data.arithmetic import BUNDLED_DIR, BUNDLED_SIZES, bundled_rows
from sega.data import BUNDLED_DIR as PAIRS_DIR
from sega.data import BUNDLED_SIZES as PAIR_SIZES
from sega.data import bundled_pairs, load_pairs, make_pairs

# question pattern -> answer from its numbers (each generator template, read as a person would)
PATTERNS = [
    (r"has (\d+) \w+\. \w+ gets (\d+) more", lambda a, b: a + b),
    (r"had (\d+) \w+ and gave (\d+) of them", lambda a, b: a - b),
    (r"^There are (\d+) \w+ with (\d+) \w+ in each\.", lambda a, b: a * b),
    (r"shares (\d+) \w+ equally among (\d+) friends", lambda a, b: a / b),
    (r"has (\d+) \w+, buys (\d+) more and then gives away (\d+)\.", lambda a, b, c: a + b - c),
    (r"already had (\d+) \w+ and buys (\d+) packs with (\d+) \w+ in each pack", lambda c, a, b: c + a * b),
    (r"fills (\d+) \w+ with (\d+) \w+ each and then uses (\d+) of", lambda a, b, c: a * b - c),
    (r"costs \$(\d+)\. \w+ buys (\d+) notebooks and pays with a \$(\d+) bill", lambda p, k, bill: bill - p * k),
    (r"is (\d+) years old\. \w+ is (\d+) years older than \w+\. How old will \w+ be in (\d+) years",
     lambda a, b, c: a + b + c),
    (r"has (\d+) red \w+ and (\d+) blue \w+ and puts them equally into (\d+) bags", lambda a, b, c: (a + b) / c),
]
EQUATION = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)")


def solve(question: str) -> int:
    hits = [(fn, m) for pat, fn in PATTERNS if (m := re.search(pat, question))]
    assert len(hits) == 1, f"question matches {len(hits)} known patterns: {question!r}"
    fn, m = hits[0]
    value = fn(*map(int, m.groups()))
    assert value == int(value) and value > 0, f"answer {value} is not a positive integer: {question!r}"
    return int(value)


def equation_is_correct(x: str, op: str, y: str, z: str) -> bool:
    x, y, z = int(x), int(y), int(z)
    return {"+": x + y, "-": x - y, "*": x * y, "/": z * y if y else None}[op] == (x if op == "/" else z)


def final_answer(text: str) -> str | None:
    m = re.search(r"Final Answer: (-?\d+)\s*$", text)
    return m.group(1) if m else None


def test_the_task_is_deterministic_in_its_seed():
    assert arithmetic_task(50, seed=3) == arithmetic_task(50, seed=3)
    assert arithmetic_task(50, seed=3) != arithmetic_task(50, seed=4)
    assert arithmetic_task(20, seed=3) == arithmetic_task(50, seed=3)[:20]  # a prefix, not a reshuffle


def test_every_generated_gold_is_right_and_written_gsm8k_style():
    rows = arithmetic_task(500, seed=7)
    assert len({r["question"] for r in rows}) == 500
    for r in rows:
        assert r["answer"].endswith(f"\n#### {r['gold']}") and r["gold"] == str(solve(r["question"]))
        for m in re.finditer(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)", r["answer"]):
            assert equation_is_correct(*m.groups()[:4]) and m.group(4) == m.group(5)
        # easy on purpose: numbers of at most two digits in the question (the $100 bill aside)
        assert all(int(n) < 100 or n == "100" for n in re.findall(r"\d+", r["question"])), r["question"]


def test_one_and_two_step_problems_both_occur():
    steps = [r["answer"].count("<<") for r in arithmetic_task(300, seed=0)]
    assert set(steps) == {1, 2} and 0.4 < steps.count(1) / len(steps) < 0.8


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_bundled_task_files_equal_the_generator_and_load_as_gsm8k(split):
    raw = [json.loads(line) for line in (BUNDLED_DIR / f"arithmetic_{split}.jsonl").read_text().splitlines()]
    assert all(set(r) == {"question", "answer"} for r in raw)  # GSM8K's own columns only
    rows = load_gsm8k("arithmetic", split=split)
    assert len(rows) == BUNDLED_SIZES[split] and rows == bundled_rows(split)


def test_the_bundled_test_questions_never_appear_in_train():
    train = {r["question"] for r in load_gsm8k("arithmetic", split="train")}
    assert not train & {r["question"] for r in load_gsm8k("arithmetic", split="test")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_bundled_pair_files_equal_the_generator(split):
    assert load_pairs("bundled", split=split) == bundled_pairs(split)
    assert len(bundled_pairs(split)) == PAIR_SIZES[split]
    assert (PAIRS_DIR / f"pairs_{split}.jsonl").is_file()


def test_pairs_are_deterministic_and_train_and_heldout_prompts_are_disjoint():
    assert make_pairs(30, seed=5) == make_pairs(30, seed=5)
    assert not {p["prompt"] for p in bundled_pairs("train")} & {p["prompt"] for p in bundled_pairs("test")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_chosen_is_correct_and_reasoned_and_every_rejected_is_wrong(split):
    pairs = load_pairs("bundled", split=split)
    kinds = {p["rejected_kind"] for p in pairs}
    assert kinds == {"slip", "wrong_op", "unreasoned"}
    for p in pairs:
        gold = str(solve(p["prompt"].split("\n\n", 1)[1]))
        chosen_eqs = EQUATION.findall(p["chosen"])
        assert chosen_eqs and all(equation_is_correct(*eq) for eq in chosen_eqs), p["chosen"]
        assert final_answer(p["chosen"]) == gold == p["answer"] == chosen_eqs[-1][3]

        rejected_eqs = EQUATION.findall(p["rejected"])
        assert final_answer(p["rejected"]) not in (None, gold), p["rejected"]
        if p["rejected_kind"] == "unreasoned":
            assert not rejected_eqs and p["rejected"].count("\n") == 0
        elif p["rejected_kind"] == "slip":  # exactly one wrong equation, the others right
            assert sum(not equation_is_correct(*eq) for eq in rejected_eqs) == 1, p["rejected"]
        else:  # wrong_op: every equation right, but one operator differs from the chosen one
            assert all(equation_is_correct(*eq) for eq in rejected_eqs)
            assert [eq[1] for eq in rejected_eqs] != [eq[1] for eq in chosen_eqs]
