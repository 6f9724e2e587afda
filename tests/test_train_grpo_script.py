"""scripts/train_grpo.py end to end in a subprocess: outputs, resume equality, Ctrl-C, bad input, DDP."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo.run import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_grpo.py"
TINY = ["--model", "tiny-llama", "--task", "arithmetic", "--prompts-per-step", "2", "--num-generations", "4",
        "--max-completion-length", "12", "--lora-dropout", "0", "--learning-rate", "1e-2"]
VOLATILE = ("time/", "tokens_per_second")


@pytest.fixture()
def env(tmp_path):
    e = dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "outputs"), PYTHONPATH=str(ROOT),
             GRPO_CACHE_DIR=os.environ.get("GRPO_TEST_CACHE", str(tmp_path / "cache")), OMP_NUM_THREADS="1")
    return e


def run(args, env, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def test_run_writes_config_metrics_checkpoint_final_and_plot(env, tmp_path):
    out = run([*TINY, "--max-steps", "3", "--run-name", "r", "--save-steps", "2"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "r"
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 3
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(isinstance(r["reward"], float) and isinstance(r["grad_norm"], float) for r in rows)
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert (run_dir / "reward_curve.png").stat().st_size > 1000
    from peft import PeftModel  # the adapter is standard PEFT format
    from grpo.models import load_model

    base, _ = load_model("tiny-llama", cache_dir=env["GRPO_CACHE_DIR"], trainable=False)
    assert isinstance(PeftModel.from_pretrained(base, run_dir / "final"), PeftModel)


def test_resume_reproduces_the_uninterrupted_run(env, tmp_path):
    assert run([*TINY, "--max-steps", "4", "--run-name", "full"], env).returncode == 0
    first = run([*TINY, "--max-steps", "2", "--run-name", "cut"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run([*TINY, "--max-steps", "4", "--run-name", "cut", "--resume"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    full = stable(read_metrics(tmp_path / "outputs" / "full" / "metrics.jsonl"))
    cut = stable(read_metrics(tmp_path / "outputs" / "cut" / "metrics.jsonl"))
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    assert cut == full


def test_ctrl_c_saves_a_checkpoint_and_exits_130(env, tmp_path):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, "--max-steps", "500", "--run-name", "int"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "outputs" / "int" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    ckpts = list((tmp_path / "outputs" / "int" / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "trainer_state.pt").is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "no/such/dir/anywhere"], "not found"),
    (["--loss-type", "ppo"], "loss_type"),
    (["--task", "chess"], "unknown task"),
    (["--reward-funcs", "nope"], "unknown reward function"),
    (["--num-generationz", "3"], "did you mean `num_generations`"),
])
def test_bad_input_is_one_line_and_nonzero_exit(env, args, message):
    out = run([*TINY, "--max-steps", "1", *args], env)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_training_on_from_an_adapter_saves_an_adapter_of_the_original_base(env, tmp_path):
    """--base-model an adapter run (the GSM8K pipeline's rl_sft_model): the adapter is trained further, so
    the saved one must name the adapter's own base (naming the run folder made it fail to load), and the KL
    reference is that adapter as loaded (it was the bare base)."""
    import torch
    from peft import PeftModel
    from grpo.models import load_model

    from grpo.checkpoint import save_model

    sft, tok = load_model("tiny-llama", cache_dir=env["GRPO_CACHE_DIR"], use_lora=True, lora_r=4)
    torch.manual_seed(0)
    for name, p in sft.named_parameters():  # an adapter that changes the model, as an SFT run's does
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    save_model(sft, tok, tmp_path / "outputs" / "first" / "final", base_name="tiny-llama")
    out = run([*TINY, "--max-steps", "1", "--run-name", "second", "--base-model", "first", "--beta", "0.1"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    final = tmp_path / "outputs" / "second" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    kl = read_metrics(tmp_path / "outputs" / "second" / "metrics.jsonl")[0]["kl"]
    assert 0 <= kl < 1e-6  # step 1 samples from the reference itself: the loaded adapter, not the bare base
    assert not list((tmp_path / "outputs" / "second").rglob("ref"))  # the frozen reference copy is never saved
    base, _ = load_model("tiny-llama", cache_dir=env["GRPO_CACHE_DIR"], trainable=False)
    expected = PeftModel.from_pretrained(base, final).eval()
    loaded, _ = load_model(str(tmp_path / "outputs" / "second"), cache_dir=env["GRPO_CACHE_DIR"], trainable=False)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, expected(ids).logits, rtol=0, atol=0)


# the drill task's rows with a reward a tiny random model moves within a few steps (a text-dependent metric)
DRILL = [*TINY, "--task", "drill", "--max-completion-length", "8", "--reward-funcs", "grpo_helpers:vowel_fraction"]
EVAL = ["--eval-steps", "2", "--eval-num-examples", "6", "--eval-batch-size", "4"]
EVAL_VOLATILE = ("seconds", "tokens_per_second")


def eval_rows(path):
    return [{k: v for k, v in r.items() if k not in EVAL_VOLATILE} for r in read_metrics(path)]


def test_held_out_evaluation_during_training_matches_eval_script_and_leaves_training_unchanged(env, tmp_path):
    env = {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    plain = run([*DRILL, "--max-steps", "3", "--run-name", "plain"], env)
    assert plain.returncode == 0, plain.stderr[-3000:]
    out = run([*DRILL, *EVAL, "--max-steps", "3", "--run-name", "ev"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "eval after step 0: grpo_helpers:vowel_fraction/rate" in out.stderr
    runs = tmp_path / "outputs"
    assert stable(read_metrics(runs / "ev" / "metrics.jsonl")) == stable(read_metrics(runs / "plain" / "metrics.jsonl"))
    rows = read_metrics(runs / "ev" / "eval.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 3]  # before training, every 2 steps, after the last
    assert all(r["num_examples"] == 6 and "grpo_helpers:vowel_fraction/rate/level_5" in r for r in rows)
    assert len({r["grpo_helpers:vowel_fraction/mean"] for r in rows}) > 1  # the model as trained, not the base
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_grpo.py"), "--task", "drill",
                             "--reward-funcs", "grpo_helpers:vowel_fraction",
                             "--model-path", str(runs / "ev" / "final"), "--num-examples", "6", "--batch-size", "4",
                             "--max-new-tokens", "8", "--output-file", str(tmp_path / "after.json")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert script.returncode == 0, script.stderr[-3000:]
    after = json.loads((tmp_path / "after.json").read_text())
    last = {k: v for k, v in rows[-1].items() if k != "step" and k not in EVAL_VOLATILE}
    assert {k: after[k] for k in last} == last


def test_resumed_run_keeps_its_held_out_curve_and_does_not_repeat_step_0(env, tmp_path):
    env = {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    assert run([*DRILL, *EVAL, "--max-steps", "4", "--run-name", "full"], env).returncode == 0
    assert run([*DRILL, *EVAL, "--max-steps", "2", "--run-name", "cut"], env).returncode == 0
    again = run([*DRILL, *EVAL, "--max-steps", "4", "--run-name", "cut", "--resume"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "eval after step 0" not in again.stderr
    full, cut = (eval_rows(tmp_path / "outputs" / r / "eval.jsonl") for r in ("full", "cut"))
    assert [r["step"] for r in cut] == [0, 2, 4] and cut == full


def test_the_main_job_is_the_drill_recipe_and_evaluates_only_the_drill_task_by_default(monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_grpo import TrainGRPOSettings

    from grpo.config import parse_settings

    monkeypatch.setattr(sys, "argv", ["train_grpo.py"])
    main = parse_settings(TrainGRPOSettings, print_config=False, section="grpo")
    recipe = json.loads((ROOT / "configs" / "recipe_drill.json").read_text())
    assert all(getattr(main, k) == v for k, v in {**recipe["common"], **recipe["grpo"]}.items() if k != "run_name")
    assert main.eval_steps == 10 and main.eval_num_examples is None  # every held-out problem, every 10 steps
    monkeypatch.setattr(sys, "argv", ["train_grpo.py", "--task", "gsm8k"])
    assert parse_settings(TrainGRPOSettings, print_config=False, section="grpo").eval_steps == 0
