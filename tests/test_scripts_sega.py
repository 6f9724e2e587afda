"""The SEGA pipeline end to end on tiny-llama with the original README's flags: reflective SFT and
train_sega.py in subprocesses, then eval_pref_accuracy.py (exit codes, finite metrics, outputs); the
evaluator, resume equality, Ctrl-C, the shipped config and one-line errors run in-process (runpy: the
scripts' real __main__), to spare a ~15 s Python + torch start per case on a loaded 2-core machine."""
import importlib.util
import json
import math
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.config import parse_settings
from grpo.run import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SEGA = ROOT / "scripts" / "train_sega.py"
CONFIG = ROOT / "configs" / "sega_demo.yaml"
VOLATILE = ("time/", "tokens_per_second")
ACCURACY_KEYS = ("n", "beta", "accuracy", "ties", "accuracy_length_normalized", "ties_length_normalized",
                 "reward_chosen_mean", "reward_rejected_mean", "margin_mean")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sega")
    return {**os.environ, "GRPO_OUTPUT_ROOT": str(root / "outputs"), "PYTHONPATH": str(ROOT),
            "GRPO_CACHE_DIR": os.environ.get("GRPO_TEST_CACHE", str(root / "cache")), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(script, *args, env):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def finite(row):
    return all(v is None or not isinstance(v, float) or math.isfinite(v) for v in row.values())


def test_sft_then_sega_then_eval_with_the_readme_flags(env, tmp_path, in_process, capsys):
    out = tmp_path / "outputs"
    run("train_sft.py", "--mode", "pairs", "--model_name_or_path", "tiny-llama", "--train_jsonl", "bundled",
        "--out_dir", out / "sft-demo", "--epochs", 1, "--lr", 1e-5, "--batch_size", 1, "--grad-accum", 1,
        "--num-examples", 2, env=env)
    run("train_sega.py", "--model_name_or_path", out / "sft-demo", "--train_jsonl", "bundled", "--out_dir",
        out / "sega-demo", "--k", 4, "--lambda_fork", 0.4, "--top_m", 0.1, "--reward_mapping", "softmax",
        "--beta", 1.0, "--gen_max_new_tokens", 8, "--temperature", 1.0, "--top_p", 0.95, "--epochs", 1,
        "--lr", 5e-6, "--batch_size", 1, "--dataset-limit", 2, "--kl-coef", 0.05, env=env)
    sega = out / "sega-demo"
    config = json.loads((sega / "config.json").read_text())
    assert (config["model"], config["dataset"], config["learning_rate"], config["k"], config["lambda_fork"],
            config["reward_mapping"], config["top_p"]) == (str(out / "sft-demo"), "bundled", 5e-6, 4, 0.4,
                                                           "softmax", 0.95)
    rows = read_metrics(sega / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(finite(r) for r in rows)  # epochs 1 × 2 prompts / batch 1
    assert all(r["valid_frac"] > 0 and r["completion_length"] <= 8 for r in rows)
    adapter = json.loads((sega / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-llama"  # the SFT adapter's base, not its folder
    # kl_coef > 0 after SFT: the KL term runs (step 1 samples from its reference) and the frozen reference
    # copy is never saved; that the reference is the SFT adapter, not the base, is tested where the adapter
    # differs from the base (tests/test_reference_policy.py, test_train_grpo_script.py)
    assert rows[0]["kl"] < 1e-6 and not list(sega.rglob("ref"))
    assert (sega / "score_curve.png").stat().st_size > 1000 and (sega / "checkpoints" / "step-000002").is_dir()
    held_out = json.loads((sega / "pref_accuracy.json").read_text())
    assert held_out["n"] == 48 and held_out["split"] == "test"  # the bundled held-out split
    assert all(k in held_out for k in ACCURACY_KEYS) and 0 <= held_out["accuracy"] + held_out["ties"] <= 1

    pairs = tmp_path / "pairs.jsonl"  # the evaluator on a user file, with the README's flags
    pairs.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "chosen": f"{i} + 1 = {i + 1}.",
                                         "rejected": "I do not know."}) + "\n" for i in range(3)))
    capsys.readouterr()
    in_process[0]("eval_pref_accuracy.py", "--model_name_or_path", sega, "--eval_jsonl", pairs, "--beta", 2.0)
    result = json.loads((sega / "pref_accuracy-pairs-test.json").read_text())  # beside the run's own
    assert result["n"] == 3 and result["beta"] == 2.0 and finite(result)
    assert math.isclose(result["margin_mean"], result["reward_chosen_mean"] - result["reward_rejected_mean"],
                        rel_tol=1e-5, abs_tol=1e-4)
    assert json.loads(capsys.readouterr().out)["accuracy"] == result["accuracy"]


@pytest.fixture()
def in_process(env, monkeypatch, tmp_path):
    """Run a script's __main__ in this process; returns (runner, output root)."""
    root = tmp_path / "outputs"
    for key in ("GRPO_CACHE_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("GRPO_OUTPUT_ROOT", str(root))
    handler = signal.getsignal(signal.SIGINT)

    def runner(script, *args):
        monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
        try:
            runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
        finally:
            signal.signal(signal.SIGINT, handler)  # train_sega.py installs its own

    return runner, root


TINY = ["--model", "tiny-llama", "--k", 2, "--batch-size", 2, "--gen-max-new-tokens", 6, "--lora-dropout", 0,
        "--learning-rate", 1e-2, "--eval-dataset", "", "--dataset-limit", 4]


def stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def test_resume_reproduces_the_uninterrupted_run(in_process):
    runner, root = in_process
    runner("train_sega.py", *TINY, "--max-steps", 3, "--run-name", "full")
    runner("train_sega.py", *TINY, "--max-steps", 2, "--run-name", "cut")
    runner("train_sega.py", *TINY, "--max-steps", 3, "--run-name", "cut", "--resume")
    full, cut = (stable(read_metrics(root / name / "metrics.jsonl")) for name in ("full", "cut"))
    assert [r["step"] for r in cut] == [1, 2, 3] and cut == full


def test_ctrl_c_saves_a_checkpoint_and_exits_130(in_process, monkeypatch):
    from sega.trainer import SegaTrainer

    step = SegaTrainer.step

    def interrupted_step(self):  # Ctrl-C arrives during the first step
        os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    monkeypatch.setattr(SegaTrainer, "step", interrupted_step)
    runner, root = in_process
    with pytest.raises(SystemExit) as exit_info:
        runner("train_sega.py", *TINY, "--max-steps", 50, "--run-name", "int")
    assert exit_info.value.code == 130
    assert [p.name for p in (root / "int" / "checkpoints").iterdir()] == ["step-000001"]
    assert not (root / "int" / "final").exists()


def script_module(name):
    """Import scripts/<name>.py as a module (registered, so its dataclasses' type hints resolve)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_shipped_config_chains_sft_sega_and_eval():
    sft = script_module("train_sft").SFTSettings
    evaluation = script_module("eval_pref_accuracy").PrefEvalSettings
    from sega.settings import SegaSettings

    s_sft = parse_settings(sft, ["--config", str(CONFIG)], section="sft", print_config=False)
    s_sega = parse_settings(SegaSettings, ["--config", str(CONFIG), "--k", "8"], section="sega", print_config=False)
    s_eval = parse_settings(evaluation, ["--config", str(CONFIG), "--model", "sega-demo"], section="eval",
                            print_config=False)
    assert (s_sft.mode, s_sft.run_name, s_sft.model) == ("pairs", "sft-demo", "smollm2-135m")
    assert (s_sega.model, s_sega.run_name) == ("sft-demo", "sega-demo")  # SEGA starts from the SFT run
    assert (s_sega.k, s_sega.lambda_fork, s_sega.reward_mapping, s_sega.top_p) == (8, 0.4, "softmax", 0.95)
    assert (s_eval.model, s_eval.split, s_eval.lora_r) == ("sega-demo", "test", 16)  # common applies to all


@pytest.mark.parametrize("script, args, message", [
    ("train_sega.py", ["--lamda-fork", "1"], "did you mean `lambda_fork`"),
    ("train_sega.py", ["--k", "1"], "invalid value of k"),
    ("train_sega.py", ["--train_jsonl", "missing/pairs.jsonl"], "no such file"),
    ("train_sega.py", ["--reward_mapping", "rank"], "reward_mapping"),
    ("eval_pref_accuracy.py", ["--eval_jsonl", "missing.jsonl"], "no such file"),
    ("eval_pref_accuracy.py", ["--model", "no_such_run"], "not found"),
])
def test_bad_input_is_one_line_error_and_exit_2(in_process, capsys, script, args, message):
    runner, root = in_process
    with pytest.raises(SystemExit) as exit_info:
        runner(script, "--model", "tiny-llama", *args)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("error:") and message in last, last
    assert not root.exists()  # nothing written for a run that never started
