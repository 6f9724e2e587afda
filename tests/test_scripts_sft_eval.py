"""scripts/train_sft.py and scripts/evaluate_model.py run end to end in a subprocess on tiny-llama:
exit codes, finite metrics, saved models, the CSV columns, the shipped config, one-line errors."""
import csv
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.data import load_gsm8k

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "gsm8k.json")
COLUMNS = ["question", "labeled_cot", "labeled_answer", "generated_text", "extracted_thinking",
           "extracted_answer", "correct"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripts")
    return {**os.environ, "GRPO_OUTPUT_ROOT": str(root / "outputs"), "GRPO_CACHE_DIR": str(root / "cache"),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def run(script, *args, env, ok=True):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def finite_metrics(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert rows and all(isinstance(v, (int, float)) and math.isfinite(v) for r in rows for v in r.values())
    return rows


@pytest.fixture(scope="module")
def memorised(env):
    """The pipeline's `--stage rl_prep` command with the shipped config, on tiny-llama fully fine-tuned on
    2 rows until it reproduces them: SFT must teach the format (and EOS) that the evaluator reads."""
    run("train_sft.py", "--config", CONFIG, "--stage", "rl_prep", "--model", "tiny-llama", "--use-lora", "false",
        "--dataset", "arithmetic", "--split", "test", "--num-examples", 2, "--batch-size", 2, "--grad-accum", 1,
        "--max-steps", 60, "--learning-rate", 3e-3, "--lr-scheduler", "constant", "--warmup-ratio", 0, env=env)
    return Path(env["GRPO_OUTPUT_ROOT"]) / "rl_sft_model"  # rl_prep's default run name


def test_sft_then_evaluate_scores_a_model_that_learned_the_format(env, memorised):
    config = json.loads((memorised / "config.json").read_text())
    assert (config["lora_r"], config["weight_decay"], config["seed"]) == (8, 0.01, 3407)  # common, sft sections
    assert (config["learning_rate"], config["stage"]) == (3e-3, "rl_prep")  # flags win over the file
    rows = finite_metrics(memorised / "metrics.jsonl")
    assert len(rows) == 60 and rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert (memorised / "final" / "model.safetensors").is_file()
    p = run("evaluate_model.py", "--config", CONFIG, "--model-path", "rl_sft_model", "--dataset", "arithmetic",
            "--num-examples", 2, "--greedy", "--max-new-tokens", 80, "--output-file", "rl_sft_eval.csv", env=env)
    assert "Accuracy: 100.00% (2/2)" in p.stdout and "Thinking Proportion: 100.00%" in p.stdout
    debug = Path(env["GRPO_OUTPUT_ROOT"]) / "debug"  # a bare file name goes to outputs/debug/
    with open(debug / "rl_sft_eval.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and len(table) == 2
    assert all(r["correct"] == "True" and r["extracted_answer"] == r["labeled_answer"] for r in table)
    assert all(r["extracted_thinking"] == r["labeled_cot"] for r in table)
    summary = json.loads((debug / "rl_sft_eval.json").read_text())
    assert (summary["accuracy"], summary["thinking_proportion"], summary["answer_proportion"]) == (1.0, 1.0, 1.0)
    assert summary["settings"]["top_k"] == 50 and summary["settings"]["max_new_tokens"] == 80  # evaluate section


def test_pairs_mode_takes_the_original_flags_and_its_adapter_evaluates_on_gsm8k(env, tmp_path, shared_data):
    out = tmp_path / "sft-demo"
    run("train_sft.py", "--mode", "pairs", "--model_name_or_path", "tiny-llama", "--train_jsonl", "bundled",
        "--out_dir", out, "--epochs", 1, "--lr", 1e-5, "--batch_size", 1, "--grad-accum", 1, "--num-examples", 3,
        env=env)
    config = json.loads((out / "config.json").read_text())
    assert (config["mode"], config["model"], config["learning_rate"], config["dataset"]) == \
        ("pairs", "tiny-llama", 1e-5, "bundled")
    assert len(finite_metrics(out / "metrics.jsonl")) == 3
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-llama"

    # Sampled evaluation (T = 0.7, top-k 50) of the adapter, on real GSM8K test rows when ../shared has them
    # (the bundled arithmetic task otherwise; under CI their absence is a failure: conftest.py).
    csv_path = tmp_path / "sub" / "pairs_eval.csv"  # a path with a folder is used as given
    test_file = shared_data("data/gsm8k/test.jsonl", if_missing="none")
    dataset = test_file.parent if test_file else "arithmetic"
    p = run("evaluate_model.py", "--model-path", out, "--dataset", dataset, "--num-examples", 3, "--batch-size", 2,
            "--max-new-tokens", 12, "--output-file", csv_path, env=env)
    summary = json.loads(csv_path.with_suffix(".json").read_text())
    assert summary["num_examples"] == 3 and all(0 <= summary[k] <= 1 for k in
                                                ("accuracy", "thinking_proportion", "answer_proportion"))
    assert all(math.isfinite(v) for v in summary.values() if isinstance(v, float))
    with open(csv_path, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and len(table) == 3
    gold = load_gsm8k(dataset, "test", 3)
    assert [r["labeled_answer"] for r in table] == [g["gold"] for g in gold]
    assert [r["labeled_cot"] for r in table] == [g["cot"] for g in gold]  # no "<<48/2=24>>" annotations
    assert "Answer Proportion:" in p.stdout


def test_extraction_rules_of_the_evaluator():
    ev = runpy.run_path(str(ROOT / "scripts" / "evaluate_model.py"))  # module globals; main() not run
    thinking, answer, output_paths = ev["extract_thinking"], ev["extract_answer"], ev["output_paths"]
    assert thinking(" 2 + 3 = 5\n<end_working_out><SOLUTION>5</SOLUTION>") == "2 + 3 = 5"  # [E1]
    assert thinking("noise<start_working_out> again <end_working_out>") == "again"  # repeated start tag
    assert thinking("no end tag <SOLUTION>5</SOLUTION>") == "" and thinking("<end_working_out>") == ""
    assert answer("x<end_working_out><SOLUTION> 1,000 </SOLUTION> more") == "1,000"  # [E2] lenient
    assert answer("<SOLUTION>5") == "" and answer("</SOLUTION>5<SOLUTION>") == ""
    assert ev["accuracy_match"]("1,000", "1000") and not ev["accuracy_match"]("$5", "5")  # [E3] REWARDS.md B
    csv_path, summary = output_paths("runs/x.csv")
    assert (csv_path, summary) == (Path("runs/x.csv"), Path("runs/x.json"))


@pytest.mark.parametrize("script, args, message", [
    ("train_sft.py", ["--model", "no_such_model", "--dataset", "arithmetic"], "not found"),
    ("train_sft.py", ["--config", CONFIG, "--lerning-rate", "1"], "unknown key `lerning_rate`"),
    ("train_sft.py", ["--dataset", "missing/train.jsonl"], "no such file"),
    ("evaluate_model.py", ["--model-path", "no_such_run", "--dataset", "arithmetic"], "not found"),
    ("evaluate_model.py", ["--dataset", "missing/test.jsonl"], "no such file"),
])
def test_bad_input_is_one_line_error_and_nonzero_exit(script, args, message, monkeypatch, capsys, tmp_path):
    # In-process (runpy) to spare a Python + torch start per case; the subprocess tests above cover the
    # real entry point. cli_main turns the UserError into "error: ..." and exit status 2.
    monkeypatch.setenv("GRPO_OUTPUT_ROOT", str(tmp_path / "outputs"))
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error:") and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "outputs").exists()  # nothing written for a run that never started
