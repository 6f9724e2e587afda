"""System E (grpo-reasoncheck): train_grpo with configs/reasoncheck.json, then the before/after demo, end to
end on tiny-llama; the config carries E's settings; one-line errors."""
import json
import math
from pathlib import Path

import pytest

import rewards
from pipeline_helpers import ROOT, model_cache, run_bad_input, run_in_process, run_subprocess, script_env

CONFIG = str(ROOT / "configs" / "reasoncheck.json")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return script_env(tmp_path_factory.mktemp("reasoncheck"), model_cache(tmp_path_factory))


def test_the_config_holds_the_original_settings():
    config = json.loads(Path(CONFIG).read_text())
    common, grpo = config["common"], config["grpo"]
    assert (common["lora_r"], common["lora_alpha"], common["load_in_4bit"]) == (64, 64, False)
    assert tuple(grpo["reward_funcs"]) == rewards.PRESETS["reasoncheck"]  # the five rewards, max 4.0
    assert (grpo["learning_rate"], grpo["num_generations"], grpo["max_grad_norm"]) == (5e-6, 8, 0.1)
    assert (grpo["lr_scheduler"], grpo["warmup_ratio"], grpo["max_completion_length"]) == ("cosine", 0.1, 512)


def test_train_then_demo_before_and_after(env, monkeypatch, capsys):
    out = Path(env["GRPO_OUTPUT_ROOT"])
    run_subprocess("train_grpo.py", "--config", CONFIG, "--model", "tiny-llama", "--dataset", "arithmetic",
                   "--max-steps", 2, "--num-generations", 2, "--max-completion-length", 8, env=env)
    run_dir = out / "reasoncheck_grpo"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["task"], config["lora_r"], config["lr_scheduler"], config["max_grad_norm"]) == \
        ("reasoncheck", 64, "cosine", 0.1)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m[k]) for m in metrics for k in ("reward", "loss", "grad_norm", "lr"))
    assert all(f"rewards/{name}/mean" in metrics[0] for name in rewards.PRESETS["reasoncheck"])
    assert (run_dir / "final" / "adapter_config.json").is_file()

    p = run_in_process("demo_reasoncheck.py", "--config", CONFIG, "--model", "tiny-llama", "--dataset", "arithmetic",
                       "--num-examples", 2, "--max-new-tokens", 12, "--width", 100,  # trained: the config's run
                       env=env, monkeypatch=monkeypatch, capsys=capsys)
    demo = json.loads((out / "eval" / "reasoncheck_demo.json").read_text())
    assert (demo["before_model"], demo["after_model"]) == ("tiny-llama", "reasoncheck_grpo")
    assert len(demo["examples"]) == 2 and demo["examples"][0]["gold"]
    for example in demo["examples"]:
        for side in ("before", "after"):
            r = example[side]["rewards"]
            assert set(r) == {*rewards.PRESETS["reasoncheck"], "total"} and 0.0 <= r["total"] <= 4.0
            assert math.isclose(r["total"], sum(r[n] for n in rewards.PRESETS["reasoncheck"]))
    assert 0.0 <= demo["summary"]["after"]["accuracy"] <= 1.0
    assert "BEFORE (tiny-llama)" in p.out and "AFTER (reasoncheck_grpo)" in p.out and " │ " in p.out
    assert "| correctness |" in (out / "eval" / "reasoncheck_demo.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--trained", "no_such_run"], "not found"),
    (["--dataset", "missing.jsonl"], "no such file"),
    (["--num-examples", "0"], "num_examples"),
])
def test_bad_input_is_one_line_error_and_nonzero_exit(args, message, monkeypatch, capsys, tmp_path):
    last = run_bad_input("demo_reasoncheck.py", "--model", "tiny-llama", "--dataset", "arithmetic", *args,
                         tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert message in last
