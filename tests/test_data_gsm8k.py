"""grpo.data.gsm8k on the real GSM8K files (../shared/data/gsm8k), the hub path, and the prompts."""
import json

import pytest

from grpo.data import DataError, gsm8k_cot, gsm8k_gold, load_gsm8k, to_reasoning_prompts, to_working_out_prompts
from grpo.data.gsm8k import REASONING_SYSTEM_PROMPT, sft_completion


@pytest.fixture
def gsm8k_dir(shared_data):
    """../shared/data/gsm8k beside the checkout: skipped without it, a failure under CI (conftest.py)."""
    for split in ("train", "test"):
        shared_data(f"data/gsm8k/{split}.jsonl")
    return shared_data("data/gsm8k")


@pytest.mark.parametrize("split, count", [("train", 7473), ("test", 1319)])
def test_real_gsm8k_loads_in_full_and_every_gold_is_a_number(gsm8k_dir, split, count):
    rows = load_gsm8k(gsm8k_dir, split=split)
    assert len(rows) == count
    for r in rows:
        float(r["gold"])  # every GSM8K gold is a plain number once commas are gone
        assert "####" not in r["cot"] and "<<" not in r["cot"]


def test_real_gsm8k_first_rows_and_limit(gsm8k_dir):
    rows = load_gsm8k(gsm8k_dir / "train.jsonl", limit=2)
    assert len(rows) == 2
    assert rows[0]["question"].startswith("Natalia sold clips to 48 of her friends")
    assert rows[0]["gold"] == "72"
    # "Natalia sold 48/2 = <<48/2=24>>24 clips in May." loses its calculator annotation
    assert rows[0]["cot"].startswith("Natalia sold 48/2 = 24 clips in May.")
    assert rows[1]["gold"] == "10"
    assert load_gsm8k(gsm8k_dir, split="test", limit=1)[0]["gold"] == "18"


def test_real_gsm8k_golds_with_thousands_separators_lose_their_commas(gsm8k_dir):
    raw = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    with_commas = [r for r in raw if "," in r["answer"].rpartition("####")[2]]
    assert with_commas, "GSM8K train has golds like '#### 1,000'"
    for r in with_commas:
        assert gsm8k_gold(r["answer"]) == r["answer"].rpartition("####")[2].strip().replace(",", "")


@pytest.mark.parametrize("answer, gold", [
    ("so 2+2 = 4\n#### 4", "4"),
    ("x\n#### 1,234,567", "1234567"),
    ("x\n####   -3.5  \n", "-3.5"),
    ("a #### 1\nb\n#### 2", "2"),  # the last marker wins
])
def test_gold_is_the_text_after_the_last_marker_without_commas(answer, gold):
    assert gsm8k_gold(answer) == gold


@pytest.mark.parametrize("answer", ["no marker here", "work\n####  "])
def test_an_answer_without_a_gold_raises(answer):
    with pytest.raises(ValueError):
        gsm8k_gold(answer)


def test_cot_drops_calculator_annotations_and_the_gold_line():
    assert gsm8k_cot("He has 3*4 = <<3*4=12>>12 eggs.\n#### 12") == "He has 3*4 = 12 eggs."


def test_a_row_without_a_gold_is_reported_with_its_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"question": "q", "answer": "1 + 1 = 2\\n#### 2"}\n{"question": "q", "answer": "forgot"}\n')
    with pytest.raises(DataError, match=f"{f}:2: answer has no '####'"):
        load_gsm8k(tmp_path)


def test_the_default_source_is_the_hub_id_with_the_main_config(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"question": "q", "answer": "w\n#### 1,000"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_gsm8k(split="test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert rows == [{"question": "q", "answer": "w\n#### 1,000", "gold": "1000", "cot": "w"}]


ROW = {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5",
       "gold": "5", "cot": "2 + 3 = 5"}


def test_working_out_prompt_rows_carry_the_suffix_gold_and_sft_target():
    (row,) = to_working_out_prompts([ROW])
    system, user = row["prompt"]
    assert system["role"] == "system" and user == {"role": "user", "content": ROW["question"]}
    for tag in ("<start_working_out>", "<end_working_out>", "<SOLUTION>", "</SOLUTION>"):
        assert tag in system["content"]
    assert row["prompt_suffix"] == "<start_working_out>"
    assert row["answer"] == "5" and row["solution"] == ROW["answer"]
    # The SFT target follows the suffix: the working out, then the tagged solution at the very end.
    assert row["sft_completion"] == sft_completion(ROW) == "2 + 3 = 5<end_working_out><SOLUTION>5</SOLUTION>"


def test_reasoning_prompt_rows_use_the_reasoncheck_format():
    (row,) = to_reasoning_prompts([ROW])
    assert row["prompt"][0] == {"role": "system", "content": REASONING_SYSTEM_PROMPT}
    assert REASONING_SYSTEM_PROMPT.splitlines()[1:] == ["<reasoning>", "...", "</reasoning>", "<answer>", "...",
                                                        "</answer>"]
    assert row["prompt"][1]["content"] == ROW["question"]
    assert row["answer"] == "5" and row["prompt_suffix"] == ""
