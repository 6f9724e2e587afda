"""Every registered reward on hostile input: arbitrary Unicode (lone surrogates included), tag soups,
nested and repeated tags, odd completion objects, 1 MB texts. Each must return one float (or None)
per completion, deterministically, without raising, and quickly."""
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import REWARD_FUNCTIONS

TAGS = ["<think>", "</think>", "<score>", "</score>", "<start_working_out>", "<end_working_out>", "<SOLUTION>",
        "</SOLUTION>", "<reasoning>", "</reasoning>", "<answer>", "</answer>", "<sql>", "</sql>", "<SQL>",
        "\\boxed{", "{", "}", "####", "\n", " ", "\t", "\x00", "\ud800", "\udfff", "\ufeff", "72", "-3.5", "1,000",
        "3/4", "$", "%", "0.5", "nan", "1e999", "9" * 80, "SELECT ", "FROM t", " WHERE ", " JOIN ", "(", ")", ";",
        "'", '"', "--", "/*", "*/", "WITH ", "ATTACH 'x.db' AS y", "é", "ß", "İ", "٣", "𝟘"]
UNICODE = st.text(st.characters(exclude_categories=()), max_size=200)
SOUP = st.lists(st.sampled_from(TAGS) | UNICODE, max_size=30).map("".join)
TEXT = SOUP | UNICODE
COMPLETION = st.one_of(
    TEXT,
    TEXT.map(lambda t: [{"role": "assistant", "content": t}]),
    TEXT.map(lambda t: [{"role": "assistant", "content": [{"type": "text", "text": t}, {"type": "image"}]}]),
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([None, 42, 3.5, [], [{}], [{"content": None}], [{"role": "assistant"}], {"content": "x"}, [None]]),
)
GOLD = st.one_of(st.none(), TEXT, st.sampled_from(["72", "1,200", "#### 9", "0.5", "SELECT 1", "SELECT a FROM t"]),
                 st.floats(allow_nan=True), st.integers())
CONTEXT = st.one_of(st.none(), TEXT, st.just("CREATE TABLE t (a INT); INSERT INTO t VALUES (1), (2);"))


def check(values, n):
    assert isinstance(values, list) and len(values) == n
    for v in values:
        assert v is None or (type(v) is float and math.isfinite(v)), v


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(completions=st.lists(COMPLETION, min_size=1, max_size=3), data=st.data())
def test_any_completion_and_column_value_gives_one_finite_float_or_none_per_completion(name, completions, data):
    n = len(completions)
    columns = {key: data.draw(st.lists(strategy, min_size=n, max_size=n), label=key)
               for key, strategy in (("answer", GOLD), ("sql", GOLD), ("sql_context", CONTEXT),
                                     ("similarity_with_penalty", GOLD))}
    fn = REWARD_FUNCTIONS[name]
    first = fn(["prompt"] * n, completions, **columns)
    check(first, n)
    assert fn(["prompt"] * n, completions, **columns) == first  # deterministic


HUGE = {
    "repeated open tags": "".join(TAGS[:16]) * 6000,
    "nested tags": ("<answer><reasoning><sql><SOLUTION><think>" * 20000 + "42"
                    + "</think></SOLUTION></sql></reasoning></answer>" * 20000),
    "digits": "9" * 1_000_000,
    "whitespace then tags": " " * 1_000_000 + "<reasoning>r</reasoning><sql>SELECT 1</sql><answer>72</answer>",
    "unclosed comments and quotes": "<sql>" + "/*'\"[`--(" * 100_000 + "</sql>",
    "surrogates": "\ud800<answer>\udfff" * 100_000,
    "long almost-number score": "<think>t</think><score>" + "1" * 500_000 + "x</score>",
    "long identifier": "<sql>CREATE TABLE " + "a" * 900_000 + "</sql>",
}


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
def test_megabyte_completions_score_within_two_seconds(name):
    fn = REWARD_FUNCTIONS[name]
    for label, text in HUGE.items():
        start = time.monotonic()
        check(fn(["p"], [text], answer=["72"], sql=["SELECT 1"], sql_context=["CREATE TABLE t (a);"],
                 similarity_with_penalty=[0.5]), 1)
        assert time.monotonic() - start < 2.0, label
