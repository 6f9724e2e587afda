"""Math-answer rewards (REWARDS.md B and E) and the number reader: one test per docstring-table row,
the original extraction regex as a reference, and hand-worked examples."""
import json
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import math_answers, numbers, reasoncheck


def b(answer: str) -> str:
    """A B completion whose solution block holds `answer`."""
    return f"2 + 3 is five.<end_working_out><SOLUTION>{answer}</SOLUTION>"


def run(fn, texts, gold):
    return fn(None, texts, answer=[gold] * len(texts))


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("text, value, percent", [
    ("18", Fraction(18), False), ("$1,234.50", Fraction("1234.5"), False), ("-7", Fraction(-7), False),
    ("−7", Fraction(-7), False), ("3/4", Fraction(3, 4), False), ("3 / 4 cup", Fraction(3, 4), False),
    ("25%", Fraction(25), True), ("18 apples.", Fraction(18), False), ("18.", Fraction(18), False),
    (".5", Fraction(1, 2), False), ("€ 12", Fraction(12), False),
])
def test_last_number_reads_commas_currency_signs_fractions_percents_and_units(text, value, percent):
    assert numbers.last_number(text) == numbers.Number(value, percent)


def test_numbers_inside_words_or_other_numbers_are_not_read():
    assert numbers.numbers_in("x2 v1.5.3 5/0") == []
    assert [n.value for n in numbers.numbers_in("1,2345")] == [1, 2345]


def test_overlong_digit_runs_are_not_numbers():
    assert numbers.last_number("7 " + "9" * 100) == numbers.Number(Fraction(7))


def test_same_number_accepts_tolerance_and_percent_as_fraction_of_100():
    n = lambda s: numbers.last_number(s)  # noqa: E731
    assert numbers.same_number(n("18.0000001"), n("18"))          # |Δ| = 1e-7 ≤ 1e-6·18
    assert not numbers.same_number(n("18.001"), n("18"))
    assert numbers.same_number(n("25%"), n("25")) and numbers.same_number(n("25%"), n("0.25"))
    assert numbers.same_number(n("0.75"), n("3/4"))


def test_gsm8k_answer_is_the_stripped_text_after_the_hashes():
    assert numbers.gsm8k_answer("5 + 4 = <<5+4=9>>9\n#### 9 ") == "9"
    assert numbers.gsm8k_answer("#### 1,200") == "1,200"
    assert numbers.gsm8k_answer("no marker") is None


def test_every_gsm8k_test_gold_answer_reads_as_a_number(shared_data):
    with open(shared_data("data/gsm8k/test.jsonl"), encoding="utf-8") as f:  # ../shared beside the checkout
        golds = [numbers.gsm8k_answer(json.loads(line)["answer"]) for line in f]
    assert len(golds) == 1319 and all(numbers.gold_number(g) is not None for g in golds)


def test_answer_region_prefers_answer_then_solution_then_boxed_then_whole_text():
    assert numbers.answer_region("<answer>1</answer> <answer>2</answer>") == "2"
    assert numbers.answer_region("<SOLUTION>3</SOLUTION>") == "3"
    assert numbers.answer_region("so \\boxed{\\frac{1}{2}} ok") == "\\frac{1}{2}"
    assert numbers.answer_region("just 4") == "just 4"


# ------------------------------------------------------------------ check_answer (B, original)
@pytest.mark.parametrize("text, expected", [
    ("5<SOLUTION>5</SOLUTION>", -2.0),            # no answer extracted: no <end_working_out>
    (b("5"), 5.0),                                # exact
    (b(" 5 "), 3.5),                              # equal after strip
    (b("5.4"), 2.0),                              # ratio 1.08 ∈ [0.9, 1.1]
    (b("4.25"), 1.5),                             # ratio 0.85 ∈ [0.8, 1.2]
    (b("7"), -2.5),                               # ratio 1.4
    (b("nan"), -2.5),                             # float('nan'): no band [D1]
    (b("five"), -4.5),                            # not a number
    (b("1,000"), -4.5),                           # float() does not read commas
])
def test_check_answer_scores_each_row_of_its_table(text, expected):
    assert run(math_answers.check_answer, [text], "5") == [expected]


def test_check_answer_treats_a_zero_gold_like_a_non_number():
    assert run(math_answers.check_answer, [b("3")], "0") == [-4.5]


def test_check_answer_gives_none_without_a_gold_answer():
    assert math_answers.check_answer(None, [b("3")], answer=[None]) == [None]


def test_check_answer_reads_the_answer_when_text_follows_the_solution_block():
    # issue #13 item 2: the original's extraction has no end anchor, so a sign-off after </SOLUTION>
    # keeps the exact-match 5.0 (it scored -2.0, "no answer", when </SOLUTION> had to end the text)
    text = "Six times seven.<end_working_out><SOLUTION>42</SOLUTION>\nI hope this helps!"
    texts = [text, b("42") + " thanks", b(" 42 ") + "\n\nDone."]
    assert run(math_answers.check_answer, texts, "42") == [5.0, 5.0, 3.5]


def test_check_answer_takes_the_first_solution_block_after_end_working_out():
    # guess "7" (first block): 7/42 = 0.17, no band → −2.5; the later "42" is not read
    text = "w<end_working_out><SOLUTION>7</SOLUTION> no wait <SOLUTION>42</SOLUTION>"
    assert run(math_answers.check_answer, [text], "42") == [-2.5]


def _original_check_answer(text: str, true: str) -> float:
    """REWARDS.md B longhand: match_format_exactly's regex without `\\s*$`, then the original's bands."""
    found = re.search(r"<end_working_out>.*?<SOLUTION>(.+?)</SOLUTION>", text, re.DOTALL)
    if found is None:
        return -2.0
    guess = found.group(1)
    if guess == true:
        return 5.0
    if guess.strip() == true.strip():
        return 3.5
    try:
        ratio = float(guess) / float(true)
    except Exception:  # the original's bare except
        return -4.5
    return 2.0 if 0.9 <= ratio <= 1.1 else 1.5 if 0.8 <= ratio <= 1.2 else -2.5


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["<end_working_out>", "<SOLUTION>", "</SOLUTION>", " ", "\n", "x", "4", "2",
                                 "4.1", "!"]), max_size=12).map("".join))
def test_check_answer_equals_the_original_unanchored_extraction_and_bands(text):
    assert run(math_answers.check_answer, [text], "42") == [_original_check_answer(text, "42")]


@pytest.mark.parametrize("text, expected", [
    (b("5"), 5.0), (b("5") + " \n", 5.0),      # the solution block ends the completion
    (b("5") + "\nI hope this helps!", -2.0),    # text after </SOLUTION>: no answer extracted
    (b("7"), -2.5),                              # past the layout check, the bands of check_answer
])
def test_check_answer_strict_needs_the_solution_block_to_end_the_completion(text, expected):
    assert run(math_answers.check_answer_strict, [text], "5") == [expected]


# ------------------------------------------------------------------ check_numbers (B, original)
@pytest.mark.parametrize("text, expected", [
    ("no solution tag 5", -2.5),
    ("<SOLUTION>none</SOLUTION>", -2.5),
    ("<SOLUTION>Well, 42</SOLUTION>", 0.0),        # the first run is "," [D2]
    ("<SOLUTION>It is 1,200 dollars</SOLUTION>", 3.5),
    ("<SOLUTION>-1200.0</SOLUTION>", -1.5),
    ("<SOLUTION>1200</SOLUTION>", 3.5),
])
def test_check_numbers_scores_each_row_of_its_table(text, expected):
    assert run(math_answers.check_numbers, [text], "1200") == [expected]


def test_check_numbers_gives_0_when_the_gold_keeps_its_comma():
    assert run(math_answers.check_numbers, ["<SOLUTION>1200</SOLUTION>"], "1,200") == [0.0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<SOLUTION>", "</SOLUTION>", " ", "\n", "-", ".", ",", "4", "2", "x", "٣"]),
                max_size=12).map("".join))
def test_check_numbers_reads_the_same_run_as_the_original_regex(text):
    original = re.search(r"<SOLUTION>.*?[\s]{0,}([-]?[\d\.\,]{1,})", text, re.MULTILINE | re.DOTALL)
    if original is None:
        expected = -2.5
    else:
        try:
            expected = 3.5 if float(original.group(1).strip().replace(",", "")) == float("42") else -1.5
        except ValueError:
            expected = 0.0
    assert run(math_answers.check_numbers, [text], "42") == [expected]


# ------------------------------------------------------------------ improved B and generic
@pytest.mark.parametrize("text, expected", [
    ("no tag 1200", -2.5), ("<SOLUTION>none</SOLUTION>", -2.5),
    ("<SOLUTION>$1,200.</SOLUTION>", 3.5), ("<SOLUTION>1199</SOLUTION>", -1.5),
])
def test_check_numbers_robust_scores_each_row_of_its_table(text, expected):
    assert run(math_answers.check_numbers_robust, [text], "1,200") == [expected]


def test_check_numbers_robust_gives_none_when_the_gold_has_no_number():
    assert run(math_answers.check_numbers_robust, ["<SOLUTION>1</SOLUTION>"], "n/a") == [None]


@pytest.mark.parametrize("text, expected", [
    ("<answer>$72.00</answer>", 1.0), ("<SOLUTION>72</SOLUTION>", 1.0), ("so \\boxed{72}", 1.0),
    ("3 * 24 = 72", 1.0), ("<answer>71</answer>", 0.0), ("no number", 0.0),
])
def test_numeric_correctness_scores_each_row_of_its_table(text, expected):
    assert run(math_answers.numeric_correctness, [text], "72") == [expected]


def test_numeric_correctness_reads_a_whole_gsm8k_solution_as_gold():
    assert run(math_answers.numeric_correctness, ["<answer>9</answer>"], "4 + 5 = 9\n#### 9") == [1.0]


def test_accuracy_match_compares_floats_after_commas_else_stripped_strings():
    assert math_answers.accuracy_match("1,200", "1200.0000001")
    assert not math_answers.accuracy_match("1201", "1200")
    assert math_answers.accuracy_match(" yes ", "yes") and not math_answers.accuracy_match(None, "1")


# ------------------------------------------------------------------ E: correctness and integer
E = "<reasoning>\n8 * 9\n</reasoning>\n<answer>\n{}\n</answer>\n"


def test_correctness_gives_2_when_the_answer_equals_the_gold_string():
    assert run(reasoncheck.correctness, [E.format("72"), "72"], "72") == [2.0, 2.0]  # bare text: upstream [D1]


@pytest.mark.parametrize("answer", ["72.0", "$72", "seventy-two", ""])
def test_correctness_gives_0_for_any_other_answer(answer):
    assert run(reasoncheck.correctness, [E.format(answer)], "72") == [0.0]


def test_correctness_gives_none_without_gold_and_reads_a_full_gsm8k_solution():
    assert reasoncheck.correctness(None, [E.format("72")], answer=[None]) == [None]
    assert run(reasoncheck.correctness, [E.format("72")], "8*9=72\n#### 72") == [2.0]


def test_xml_answer_is_after_the_last_answer_tag_up_to_the_next_close():
    assert reasoncheck.xml_answer("<answer>1</answer><answer> 2 </answer>3") == "2"
    assert reasoncheck.xml_answer("<answer> 4") == "4"


def test_integer_gives_half_for_an_all_digit_answer():
    assert reasoncheck.integer(None, [E.format("72"), E.format("٣٤")]) == [0.5, 0.5]


@pytest.mark.parametrize("answer", ["", "-3", "3.5", "72 apples"])
def test_integer_gives_0_otherwise(answer):
    assert reasoncheck.integer(None, [E.format(answer)]) == [0.0]


def test_a_dash_with_a_space_after_it_is_not_a_minus_sign():
    """"Total - 18" read as −18 (the sign could be followed by a space), so a correct 18 scored as wrong."""
    assert [n.value for n in numbers.numbers_in("Total - 18 apples")] == [18]
    assert [n.value for n in numbers.numbers_in("-18, −7, $ 5, -$3")] == [-18, -7, 5, -3]


def test_a_float_gold_with_an_integral_value_is_the_integer_text():
    """A gold loaded as the float 72.0 (pandas, CSV) was compared as "72.0": a correct 72 got 2.0, not 5.0."""
    from rewards.inputs import gold_text

    assert gold_text(72.0) == "72" and gold_text(2.5) == "2.5" and gold_text(float("nan")) is None
    reply = "<end_working_out><SOLUTION>72</SOLUTION>"
    assert math_answers.check_answer([None], [reply], answer=[72.0]) == [5.0]


def test_a_gold_integer_too_long_for_text_gives_none_without_raising():
    from rewards.inputs import gold_text

    assert gold_text(10 ** 5000) is None
    assert math_answers.check_answer([None], ["<end_working_out><SOLUTION>1</SOLUTION>"],
                                     answer=[10 ** 5000]) == [None]
