"""The drill task (grpo.data.drill): disjoint held-out problems, levels in turn, correct answers, one-line errors."""
import pytest

from grpo.config import UserError
from grpo.data import drill
from grpo.tasks import load_task


def _key(row):
    return row["question"]


def test_no_held_out_problem_is_ever_trained_on_and_every_level_is_held_out():
    train, test = drill.drill_rows("train"), drill.drill_rows("test")
    assert len(train) == drill.TRAIN_ROWS and len(test) == sum(drill.HELD_OUT.values()) == 222
    assert not {_key(r) for r in train} & {_key(r) for r in test}
    assert len({_key(r) for r in test}) == len(test)  # each held-out problem once
    for level, n in drill.HELD_OUT.items():
        assert sum(r["level"] == level for r in test) == n
        assert sum(r["level"] == level for r in train) == drill.TRAIN_ROWS // len(drill.LEVELS)
    # the train split draws from every train problem of the small levels, not a few of them
    assert len({_key(r) for r in train if r["level"] == 1}) == 100 - drill.HELD_OUT[1]


def test_answers_are_the_results_and_prompts_are_the_bare_expression():
    for r in drill.drill_rows("test") + drill.drill_rows("train", limit=50):
        a, op, b = r["question"].split()
        assert int(r["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert r["prompt"][-1] == {"role": "user", "content": f"{r['question']} ="}
        assert r["prompt"][0] == {"role": "system", "content": drill.SYSTEM_PROMPT}
        lo, hi = {1: (0, 9), 2: (1, 9), 3: (10, 99), 4: (10, 99), 5: (10, 99)}[r["level"]]
        assert lo <= int(a) <= hi and int(b) <= (9 if r["level"] < 5 else 99)
        assert int(r["answer"]) >= 0


def test_rows_are_deterministic_and_a_limit_keeps_every_level():
    assert drill.drill_rows("test") == drill.drill_rows("test")
    assert drill.drill_rows("train", seed=1) != drill.drill_rows("train")
    assert [r["level"] for r in drill.drill_rows("test", limit=10)] == [1, 2, 3, 4, 5] * 2


def test_task_scores_the_last_number_of_the_reply():
    task = load_task("drill", split="test", limit=3)
    assert task.reward_names == ["numeric_correctness"]
    gold = [r["answer"] for r in task.rows]
    replies = [f"{task.rows[0]['question']} = {gold[0]}", f"The answer is {int(gold[1]) + 1}.",
               f"{gold[2]}, no wait, {int(gold[2]) + 2}"]
    assert task.reward_funcs[0]([r["prompt"] for r in task.rows], replies,
                                answer=gold) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(split="validation"), "split 'validation': the drill task has the splits train and test"),
    (dict(source="data/x.jsonl"), "task drill generates its problems: dataset 'data/x.jsonl' cannot be used"),
])
def test_bad_split_or_dataset_is_one_line(kwargs, message):
    with pytest.raises(UserError, match=message):
        load_task("drill", **kwargs)
