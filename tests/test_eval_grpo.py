"""scripts/eval_grpo.py: task rewards called as in training, the rates it reports, and an end-to-end run."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo.tasks import load_task, task_rewards

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from grpo.evaluation import summarise  # noqa: E402


def test_task_rewards_score_the_primed_reply_like_training():
    task = load_task("arithmetic", split="test", limit=2)
    gold = task.rows[0]["answer"]
    good = f"7 + 1 = 8\n</reasoning>\n<answer>\n{gold}\n</answer>\n"  # the prompt suffix "<reasoning>\n" comes first
    table = task_rewards(task, task.rows[:1], [good, "I do not know"], G=2)  # [2, F]
    by_name = dict(zip(task.reward_names, table.T.tolist()))
    assert by_name["correctness"] == [2.0, 0.0]
    assert by_name["strict_format"] == [0.5, 0.0] and by_name["soft_format"] == [0.5, 0.0]


def test_summarise_reports_means_rates_and_skips_none():
    table = torch.tensor([[0.5, 2.0], [0.0, float("nan")], [0.5, 0.0], [0.0, 0.0]])  # [N=4, F=2]
    out = summarise(["format", "correct"], table, [1.0, 1.0])
    assert out["format/mean"] == 0.25 and out["format/rate"] == 0.5
    assert out["correct/mean"] == pytest.approx(2 / 3) and out["correct/rate"] == pytest.approx(1 / 3)
    assert out["reward"] == pytest.approx((2.5 + 0.0 + 0.5 + 0.0) / 4)  # a None term counts as absent


def test_summarise_gives_the_binomial_stderr_and_rates_per_level():
    table = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0], [float("nan")]], dtype=torch.float64)  # [N=6, F=1]
    out = summarise(["acc"], table, [1.0], levels=[1, 1, 2, 2, 3, 3])
    assert out["acc/rate"] == 0.6  # 3 of the 5 scored
    assert out["acc/rate_stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5), rel=1e-12)
    assert (out["acc/rate/level_1"], out["acc/rate/level_2"], out["acc/rate/level_3"]) == (0.5, 1.0, 0.0)
    assert "acc/rate/level_1" not in summarise(["acc"], table, [1.0])  # rows without a level column


def _run(tmp_path, *args):
    env = {**os.environ, "GRPO_OUTPUT_ROOT": str(tmp_path / "outputs"), "GRPO_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_grpo.py"), *map(str, args)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_eval_script_writes_summary_and_one_record_per_example(tmp_path):
    p = _run(tmp_path, "--model", "tiny-llama", "--task", "arithmetic", "--num-examples", 5, "--batch-size", 2,
             "--max-new-tokens", 6, "--output-file", "base.json")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "eval" / "base.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "outputs" / "eval" / "base.jsonl").read_text().splitlines()]
    assert summary["num_examples"] == 5 and len(records) == 5
    for name in ("xml_count", "soft_format", "strict_format", "integer", "correctness"):
        assert 0 <= summary[f"{name}/rate"] <= 1 and math.isfinite(summary[f"{name}/mean"])
        assert all(name in r for r in records)
    assert all(r["reply"].startswith("<reasoning>\n") for r in records)  # rewards saw the primed reply
    assert 1 <= summary["mean_completion_tokens"] <= 6


def test_eval_script_rejects_mismatched_weights_in_one_line(tmp_path):
    p = _run(tmp_path, "--model", "tiny-llama", "--num-examples", 2, "--reward-weights", "1.0,2.0")
    assert p.returncode == 2
    assert "reward_weights = [1.0, 2.0]: must have one weight for each of the 5 reward functions" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--batch-size", 0], "invalid value of batch_size = 0: must be >= 1"),
    (["--greedy", "false", "--temperature", 0], "invalid value of temperature = 0.0: must be > 0 when sampling"),
    (["--num-examples", 0], "invalid value of num_examples = 0: must be >= 1 (null = all)"),
])
def test_bad_generation_settings_fail_in_one_line_before_loading(tmp_path, args, message):
    p = _run(tmp_path, "--model", "no_such_model", *args)  # rejected before the model is looked up
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_prompt_suffix_setting_primes_every_row_and_reaches_the_rewards():
    task = load_task("text_to_sql", split="test", limit=2, prompt_suffix="<reasoning>\n")
    assert [r["prompt_suffix"] for r in task.rows] == ["<reasoning>\n"] * 2
    reply = "Filter the rows.\n</reasoning>\n<sql>\nSELECT 1;\n</sql>"
    primed = task_rewards(task, task.rows[:1], [reply])
    plain_task = load_task("text_to_sql", split="test", limit=1)
    plain = task_rewards(plain_task, plain_task.rows, [reply])
    fmt = task.reward_names.index("sql_format")
    assert primed[0, fmt] > plain[0, fmt]  # the opening tag came from the suffix


def test_system_prompt_setting_replaces_the_system_message_only():
    task = load_task("text_to_sql", split="test", limit=2, system_prompt="Answer with SQL.")
    plain = load_task("text_to_sql", split="test", limit=2)
    for row, ref in zip(task.rows, plain.rows):
        assert row["prompt"][0] == {"role": "system", "content": "Answer with SQL."}
        assert row["prompt"][1:] == ref["prompt"][1:] and len(row["prompt"]) == len(ref["prompt"])


@pytest.mark.parametrize("name", ["recipe_gsm8k_format", "recipe_text_to_sql", "recipe_score_model"])
def test_recipe_configs_fit_every_script_that_reads_them(name):
    from grpo.config import settings_from_dict
    from grpo.settings import GRPOSettings
    from eval_grpo import EvalGRPOSettings
    from make_cot_dataset import CotDatasetSettings

    data = json.loads((ROOT / "configs" / f"{name}.json").read_text())
    readers = {"grpo": GRPOSettings, "eval": EvalGRPOSettings, "cot_dataset": CotDatasetSettings}
    assert set(data) - {"common"} <= set(readers), set(data)
    for section, cls in readers.items():
        if section in data:
            s = settings_from_dict(cls, {**data["common"], **data[section]}, where=f"{name}:{section}")
            assert s.model == "smollm2-135m"
    grpo = settings_from_dict(GRPOSettings, {**data["common"], **data["grpo"]})
    evals = settings_from_dict(EvalGRPOSettings, {**data["common"], **data["eval"]})
    # the evaluation sees the prompts training saw: same task, priming and system message
    assert (grpo.task, grpo.prompt_suffix, grpo.system_prompt) == (evals.task, evals.prompt_suffix, evals.system_prompt)
    assert evals.split == "test" or grpo.dataset != evals.dataset  # held-out rows
