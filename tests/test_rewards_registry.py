"""The `rewards` package as configs and the trainer use it: import cost, registry, TRL calling convention."""
import os
import re
import subprocess
import sys

import pytest

import rewards
from rewards import PRESETS, REWARD_FUNCTIONS, UnknownRewardError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = dict(answer=["72"], sql=["SELECT 1"], sql_context=["CREATE TABLE t (a INT);"], similarity_with_penalty=[0.5])
SAMPLES = ["<reasoning>\n8*9\n</reasoning>\n<answer>\n72\n</answer>\n",
           "<think>ok</think><score>0.4</score>",
           "work<end_working_out><SOLUTION>72</SOLUTION>",
           "<reasoning>the t table</reasoning><sql>SELECT a FROM t</sql>", ""]


def test_importing_and_scoring_with_rewards_loads_no_torch_or_numpy():
    code = ("import sys, rewards\n"
            "for f in rewards.REWARD_FUNCTIONS.values():\n"
            "    f(['p'], ['<sql>SELECT 1</sql> <answer>72</answer>'], answer=['72'], sql=['SELECT 1'],\n"
            "      sql_context=['CREATE TABLE t (a);'], similarity_with_penalty=[0.5])\n"
            "heavy = [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_get_returns_the_registered_function():
    assert rewards.get("check_answer") is rewards.math_answers.check_answer
    assert all(rewards.get(name) is fn for name, fn in REWARD_FUNCTIONS.items())


def test_get_names_an_unknown_reward_and_lists_the_valid_ones():
    with pytest.raises(UnknownRewardError) as info:
        rewards.get("check_answr")
    message = str(info.value)
    assert "'check_answr'" in message and all(name in message for name in REWARD_FUNCTIONS)
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownRewardError):
        rewards.get(["not", "hashable"])


def test_presets_name_only_registered_rewards():
    assert all(name in REWARD_FUNCTIONS for names in PRESETS.values() for name in names)
    assert len(PRESETS["reasoncheck"]) == 5 and len(PRESETS["text_to_sql"]) == 4


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
def test_every_reward_documents_its_scoring_table(name):
    doc = REWARD_FUNCTIONS[name].__doc__ or ""
    rows = [line.strip() for line in doc.splitlines() if line.strip().startswith("|")]
    assert any(re.fullmatch(r"\|[-| ]+\|", row) for row in rows) and len(rows) >= 3, name


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
def test_chat_messages_and_plain_strings_score_the_same(name):
    fn = REWARD_FUNCTIONS[name]
    for text in SAMPLES:
        plain = fn(["q"], [text], **COLUMNS)
        assert fn(prompts=["q"], completions=[[{"role": "assistant", "content": text}]], **COLUMNS) == plain
        assert fn(["q"], [[{"role": "assistant", "content": [{"type": "text", "text": text}]}]], **COLUMNS) == plain


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
def test_unknown_columns_are_ignored_and_results_align_with_completions(name):
    fn = REWARD_FUNCTIONS[name]
    many = {k: v * len(SAMPLES) for k, v in COLUMNS.items()}
    got = fn(["q"] * len(SAMPLES), SAMPLES, **many, trainer_state={"step": 3}, question=["?"] * len(SAMPLES))
    assert len(got) == len(SAMPLES) and all(v is None or type(v) is float for v in got)
    assert got == [fn(["q"], [s], **COLUMNS)[0] for s in SAMPLES]  # no state shared across rows


@pytest.mark.parametrize("name, column", [("check_answer", "answer"), ("correctness", "answer"),
                                          ("sql_execution", "sql"), ("sql_complexity", "sql"),
                                          ("score_exp", "similarity_with_penalty")])
def test_a_missing_column_is_an_error_naming_reward_and_column(name, column):
    columns = {k: v for k, v in COLUMNS.items() if k != column}
    with pytest.raises(ValueError, match=f"{name}.*{column}"):
        REWARD_FUNCTIONS[name](["q"], ["x"], **columns)


def test_a_column_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="2 values for 1 completions"):
        rewards.get("check_answer")(["q"], ["x"], answer=["1", "2"])
