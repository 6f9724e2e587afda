"""Format rewards of the four tag schemes: one test per row of each docstring table, and the linear-time
readers checked against the original regexes on random tag soups."""
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rewards import formats

chat = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731


def score(fn, *texts):
    return fn(None, list(texts))


# ------------------------------------------------------------------ A: think_score_format
def test_think_score_format_gives_1_for_think_then_score_in_range():
    assert score(formats.think_score_format, "<think>\nSQL counts rows.\n</think>\n<score>\n0.85\n</score>\n") == [1.0]


@pytest.mark.parametrize("text", [
    "<score>0.5</score>",                                           # no think
    "<think>r</think><score>1.5</score>",                           # out of range
    "<think>r</think><score>high</score>",                          # not a number
    "<think> </think><score>0.5</score>",                           # empty think
    "<think>r</think><score>0.5</score> done",                      # trailing text
    "<think>r</think><think>r</think><score>0.5</score>",           # repeated tag
    "<score>0.5</score><think>r</think>",                           # misordered
])
def test_think_score_format_gives_0_for_anything_else(text):
    assert score(formats.think_score_format, text) == [0.0]


def test_read_score_needs_think_tag_and_one_number_in_unit_interval():
    assert formats.read_score("<think>x</think><score> 0.25 </score>") == 0.25
    assert formats.read_score("<score>0.25</score>") is None
    assert formats.read_score("<think>x</think><score>0.2 0.3</score>") is None
    assert formats.read_score("<think>x</think><score>nan</score>") is None
    assert formats.read_score("<think>x</think><score>-0.0</score>") == 0.0


def test_read_score_accepts_think_tags_in_any_case_as_the_original_does():
    # issue #13 item 6(c), REWARDS.md A: <THINK> matched case-insensitively (was None → reward −1)
    assert formats.read_score("<THINK>x</THINK><score>0.25</score>") == 0.25
    assert formats.read_score("<Think>x</think>\n<score>0.5</score>") == 0.5


def test_read_score_reads_only_a_score_after_the_thinking_closes():
    # issue #13 item 6(c): a <score> inside the thinking does not count (it was read: 0.9)
    assert formats.read_score("<think>maybe <score>0.9</score>?</think><score>0.2</score>") == 0.2
    assert formats.read_score("<think>unclosed <score>0.9</score>") is None
    assert formats.read_score("<score>0.9</score><think>x</think>") is None
    assert formats.read_score("</think><think>x <score>0.9</score>") is None  # </think> before <think>


@pytest.mark.parametrize("text, expected", [
    ("<think>r</think><score>0.5</score>", 1.0),
    ("<THINK>r</THINK><score>0.5</score>", 0.0),               # ours stays case-sensitive
    ("<think>r <score>0.5</score></think><score>0.5</score>", 0.0),  # repeated tag
])
def test_think_score_format_keeps_its_case_sensitive_layout(text, expected):
    assert score(formats.think_score_format, text) == [expected]


# ------------------------------------------------------------------ B
GOOD_B = "Let me add 2 and 3.<end_working_out><SOLUTION>5</SOLUTION>"


def test_match_format_exactly_gives_3_for_end_working_out_then_solution_at_the_end():
    assert score(formats.match_format_exactly, GOOD_B, GOOD_B + " \n\t", chat(GOOD_B)) == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("text", [
    "<SOLUTION>5</SOLUTION>",                                 # no <end_working_out>
    "<end_working_out><SOLUTION></SOLUTION>",                 # empty answer
    GOOD_B + " thanks",                                       # text after </SOLUTION>
    GOOD_B + "\nthanks",                                      # the original's re.MULTILINE accepted this [D2]
    "<SOLUTION>5</SOLUTION><end_working_out>",                # misordered
])
def test_match_format_exactly_gives_0_otherwise(text):
    assert score(formats.match_format_exactly, text) == [0.0]


def test_match_format_approximately_adds_half_for_each_tag_seen_exactly_once():
    assert score(formats.match_format_approximately, GOOD_B) == [1.5]
    assert score(formats.match_format_approximately, "<end_working_out><SOLUTION>") == [0.5 + 0.5 - 1.0]


def test_match_format_approximately_subtracts_one_for_each_tag_missing_or_repeated():
    assert score(formats.match_format_approximately, "no tags") == [-3.0]
    assert score(formats.match_format_approximately, GOOD_B + GOOD_B) == [-3.0]
    assert score(formats.match_format_approximately, GOOD_B + "</SOLUTION>") == [0.5 + 0.5 - 1.0]


def test_match_format_approximately_ignores_start_working_out_which_the_template_adds():
    assert score(formats.match_format_approximately, "<start_working_out>" * 3 + GOOD_B) == [1.5]


# ------------------------------------------------------------------ C
def test_sql_format_gives_1_for_reasoning_then_sql_in_any_case_with_any_contents():
    texts = ["<reasoning>r</reasoning>\n<sql>SELECT 1</sql>", "pre <REASONING></Reasoning> <SQL></sql> post"]
    assert score(formats.sql_format, *texts) == [1.0, 1.0]


@pytest.mark.parametrize("text", ["<sql>SELECT 1</sql><reasoning>r</reasoning>",
                                  "<reasoning>r</reasoning> so <sql>SELECT 1</sql>", "<reasoning>r</reasoning>"])
def test_sql_format_gives_0_otherwise(text):
    assert score(formats.sql_format, text) == [0.0]


def test_sql_format_strict_gives_1_only_for_the_whole_layout():
    assert score(formats.sql_format_strict, " <reasoning>r</reasoning>\n<sql>SELECT 1</sql>\n") == [1.0]


@pytest.mark.parametrize("text", ["<reasoning>r</reasoning><sql> </sql>", "x <reasoning>r</reasoning><sql>S</sql>",
                                  "<reasoning>r</reasoning><sql>S</sql><sql>S</sql>",
                                  "<REASONING>r</REASONING><sql>S</sql>"])
def test_sql_format_strict_gives_0_for_repeats_empty_sql_or_outside_text(text):
    assert score(formats.sql_format_strict, text) == [0.0]


# ------------------------------------------------------------------ E
GOOD_E = "<reasoning>\nstep one\nstep two\n</reasoning>\n<answer>\n72\n</answer>\n"


def test_strict_format_gives_half_for_the_exact_layout_including_multiline_reasoning():
    assert score(formats.strict_format, GOOD_E, "<reasoning>\n\n</reasoning>\n<answer>\n\n</answer>\n") == [0.5, 0.5]


@pytest.mark.parametrize("text", ["x" + GOOD_E, GOOD_E + "\n", GOOD_E.rstrip("\n"),
                                  GOOD_E.replace("<answer>\n", "<answer>"), "<reasoning>\n</answer>\n"])
def test_strict_format_gives_0_otherwise(text):
    assert score(formats.strict_format, text) == [0.0]


def test_soft_format_gives_half_when_both_blocks_appear_in_order():
    texts = [GOOD_E, "intro <reasoning>a\nb</reasoning> <answer>7</answer> outro"]
    assert score(formats.soft_format, *texts) == [0.5, 0.5]


@pytest.mark.parametrize("text", ["<answer>7</answer><reasoning>r</reasoning>",
                                  "<reasoning>r</reasoning>x<answer>7</answer>", "<reasoning>r</reasoning><answer>7"])
def test_soft_format_gives_0_otherwise(text):
    assert score(formats.soft_format, text) == [0.0]


@pytest.mark.parametrize("line", ["<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>"])
def test_xml_count_adds_an_eighth_for_each_tag_line_present_exactly_once(line):
    assert score(formats.xml_count, line, line * 2) == [0.125, 0.0]


def test_xml_count_of_the_strict_layout_is_one_half():
    assert score(formats.xml_count, GOOD_E) == [0.5]


def test_xml_count_subtracts_a_thousandth_per_trailing_character_after_the_first_newline():
    # 0.5 for the four lines, minus 0.001 · len("extra!") — the newline right after </answer> is free
    assert score(formats.xml_count, GOOD_E + "extra!") == pytest.approx([0.5 - 0.006])
    # the line "\n</answer>" needs no newline after it, so the text may follow at once
    assert score(formats.xml_count, GOOD_E.rstrip("\n") + "extra!") == pytest.approx([0.5 - 0.006])


# ------------------------------------------------------------------ readers == original regexes
SOUP = st.lists(st.sampled_from(["<end_working_out>", "<SOLUTION>", "</SOLUTION>", "<reasoning>", "</reasoning>",
                                 "<answer>", "</answer>", "<sql>", "</SQL>", "<Reasoning>", "\n", " ", "x", "5"]),
                max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(SOUP)
def test_solution_block_equals_the_original_regex_without_multiline(text):
    original = re.search(r"<end_working_out>.*?<SOLUTION>(.+?)</SOLUTION>\s*$", text, re.DOTALL)
    assert formats.solution_block(text) == (original.group(1) if original else None)


@settings(max_examples=400, deadline=None)
@given(SOUP)
def test_solution_answer_equals_the_original_regex_without_its_end_anchor(text):
    original = re.search(r"<end_working_out>.*?<SOLUTION>(.+?)</SOLUTION>", text, re.DOTALL)
    assert formats.solution_answer(text) == (original.group(1) if original else None)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<THINK>", "</Think>", "<score>0.5</score>", "<score> 0.7\n",
                                 "<score>", "</score>", "0.5", " ", "x"]), max_size=10).map("".join))
@example("<THINK>x</Think><score>0.5</score>").via("case-insensitive tags")
@example("<think><score>0.5</score></think>").via("a score inside the thinking")
def test_read_score_equals_the_first_score_after_the_first_close_after_the_first_open(text):
    opened = re.search("<think>", text, re.IGNORECASE)
    closed = opened and re.search("</think>", text[opened.end():], re.IGNORECASE)
    block = closed and re.search("<score>(.*?)</score>", text[opened.end() + closed.end():], re.DOTALL)
    expected = float(block.group(1)) if block and re.fullmatch(r"\s*0\.[57]\s*", block.group(1)) else None
    assert formats.read_score(text) == expected


@settings(max_examples=400, deadline=None)
@given(SOUP, st.booleans())
def test_blocks_in_order_equals_the_original_regex_search(text, ignore_case):
    for a, b in (("reasoning", "answer"), ("reasoning", "sql")):
        pattern = rf"<{a}>.*?</{a}>\s*<{b}>.*?</{b}>"
        original = re.search(pattern, text, re.DOTALL | (re.IGNORECASE if ignore_case else 0))
        assert formats.blocks_in_order(text, a, b, ignore_case=ignore_case) == (original is not None)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["<reasoning>\n", "\n</reasoning>\n", "<answer>\n", "\n</answer>\n", "\n", "a"]),
                max_size=8).map("".join))
def test_strict_format_equals_a_dotall_fullmatch_of_the_original_pattern(text):
    original = re.fullmatch(r"<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n", text, re.DOTALL)
    assert score(formats.strict_format, text) == [0.5 if original else 0.0]
