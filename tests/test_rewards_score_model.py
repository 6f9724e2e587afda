"""Score-model rewards (REWARDS.md A): each docstring-table row, against longhand arithmetic."""
import math

import pytest

from rewards import score_model


def out(x) -> str:
    return f"<think>\nStep 1: the SQL counts rows.\n</think>\n<score>\n{x}\n</score>"


@pytest.mark.parametrize("fn", [score_model.score_exp, score_model.score_quadratic])
@pytest.mark.parametrize("text", [
    "<score>0.5</score>",                     # no <think>
    "<think>r</think>",                       # no score block
    "<think>r</think><score>0.5",             # unclosed score block
    "<think>r</think><score>high</score>",    # not a number
    "<think>r</think><score>0.5 0.6</score>",  # two numbers
    out("1.01"), out("-0.2"),                 # outside [0, 1]
])
def test_invalid_output_scores_minus_one(fn, text):
    assert fn(None, [text], similarity_with_penalty=[0.5]) == [-1.0]


@pytest.mark.parametrize("pred, target, expected", [
    (0.7, 0.7, 1.0),                          # e = 0: 2·e^0 − 1 = 1
    (0.8, 0.7, 2 * math.exp(-0.2) - 1),       # e = 0.1: 2·0.81873 − 1 = 0.63746
    (0.2, 0.7, 2 * math.exp(-1.0) - 1),       # e = 0.5: 2·0.36788 − 1 = −0.26424
    (1.0, 0.0, 2 * math.exp(-2.0) - 1),       # e = 1: 2·0.13534 − 1 = −0.72933
])
def test_score_exp_is_two_exp_minus_two_error_minus_one(pred, target, expected):
    got = score_model.score_exp(None, [out(pred)], similarity_with_penalty=[target])
    assert got == [pytest.approx(expected, abs=1e-12)]


def test_score_exp_matches_the_documented_values():
    targets = [0.5, 0.6, 1.0, 0.0]
    got = score_model.score_exp(None, [out(0.5)] * 4, similarity_with_penalty=targets)
    assert [round(v, 2) for v in got] == [1.0, 0.64, -0.26, -0.26]


@pytest.mark.parametrize("pred, target, expected", [
    (0.7, 0.7, 1.0),       # 1 − 2·0²
    (0.8, 0.7, 0.98),      # 1 − 2·0.01
    (0.2, 0.7, 0.5),       # 1 − 2·0.25
    (1.0, 0.0, -1.0),      # 1 − 2·1
])
def test_score_quadratic_is_one_minus_two_squared_error(pred, target, expected):
    got = score_model.score_quadratic(None, [out(pred)], similarity_with_penalty=[target])
    assert got == [pytest.approx(expected, abs=1e-12)]


@pytest.mark.parametrize("fn", [score_model.score_exp, score_model.score_quadratic])
def test_rewards_stay_within_minus_one_and_one_and_peak_at_the_target(fn):
    preds = [k / 20 for k in range(21)]
    got = fn(None, [out(p) for p in preds], similarity_with_penalty=[0.35] * len(preds))
    assert all(-1.0 <= v <= 1.0 for v in got) and max(got) == got[7] == 1.0


@pytest.mark.parametrize("fn", [score_model.score_exp, score_model.score_quadratic])
def test_target_may_be_text_or_an_alias_column_and_missing_targets_give_none(fn):
    assert fn(None, [out(0.5)] * 3, sbert_similarity=["0.5", None, "n/a"]) == [1.0, None, None]
    assert fn(None, [out(0.5)], target=[0.5]) == [1.0]
    with pytest.raises(ValueError, match="similarity_with_penalty"):
        fn(None, [out(0.5)], answer=["0.5"])


@pytest.mark.parametrize("fn", [score_model.score_exp, score_model.score_quadratic])
def test_think_tags_in_any_case_are_read_as_the_original_does(fn):
    # issue #13 item 6(c): "<THINK>" gave −1 (invalid); the original matches it case-insensitively
    text = "<THINK>\nthe SQL counts rows\n</THINK>\n<score>0.5</score>"
    assert fn(None, [text], similarity_with_penalty=[0.5]) == [1.0]


@pytest.mark.parametrize("fn", [score_model.score_exp, score_model.score_quadratic])
def test_a_score_inside_the_thinking_does_not_count(fn):
    # issue #13 item 6(c): the 0.1 inside <think> was read (reward 2·e^(−1.6) − 1 = −0.60 against 0.9)
    text = "<think>first guess <score>0.1</score>, no</think><score>0.9</score>"
    assert fn(None, [text], similarity_with_penalty=[0.9]) == [1.0]
    assert fn(None, ["<think>never closed <score>0.9</score>"], similarity_with_penalty=[0.9]) == [-1.0]


@pytest.mark.parametrize("fn", [score_model.score_exp, score_model.score_quadratic])
def test_a_target_too_large_for_a_float_gives_none_without_raising(fn):
    # issue #13 item 6(d): float(10**400) raised OverflowError out of the reward
    targets = [10 ** 400, -(10 ** 400), "1" * 400, "1e400", 1e400]
    assert fn(None, [out(0.5)] * len(targets), similarity_with_penalty=targets) == [None] * len(targets)
