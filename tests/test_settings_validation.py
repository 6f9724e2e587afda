"""Bad settings stop a script at once (issue #14 item 1): one line naming the setting, its value and what
is allowed, exit status 2, before any model, data set or run folder, within 5 s; printed once under torchrun.

Most cases run in-process, through each script's real `main()`: its call to `parse_settings` is wrapped so
that settings which pass stop the script right there (`Accepted`). A bad value must therefore raise the
ConfigError from parse_settings itself, i.e. before the model, the data or the run folder is touched.
A handful run as real subprocesses (exit status, one stderr line, time, nothing written), one under torchrun.
"""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo.config import ConfigError, parse_settings

ROOT = Path(__file__).resolve().parents[1]
FILES = {  # written into a temporary folder; "{tmp}" in a case's arguments is that folder
    "latin1.json": '{"run_name": "caf\xe9"}'.encode("latin-1"),
    "empty.yaml": b"",
    "comments.yaml": b"# nothing set yet\n",
    "empty.json": b"",
    "nan.json": b'{"learning_rate": NaN}',
    "grpo_g1.yaml": b"common:\n  model: tiny-llama\ngrpo:\n  num_generations: 1\n",
    "sega_top_p.yaml": b"sega:\n  top_p: 0\n",
}

GRPO = [  # train_grpo.py: (arguments, fragments the one-line error must contain)
    (["--num-generations", "1"], ["num_generations = 1", ">= 2"]),
    (["--use-lora", "false", "--sharding", "fsdp2"], ["sharding = 'fsdp2'", "torchrun"]),  # one process
    (["--num-generations", "0"], ["num_generations = 0"]),
    (["--temperature", "0"], ["temperature = 0.0", "> 0"]),
    (["--temperature", "-1"], ["temperature = -1.0"]),
    (["--learning-rate", "-1"], ["learning_rate = -1.0", "> 0"]),
    (["--learning-rate", "0"], ["learning_rate = 0.0"]),
    (["--learning-rate", "nan"], ["`learning_rate`", "nan", "finite"]),
    (["--learning-rate", "inf"], ["`learning_rate`", "inf", "finite"]),
    (["--logging-steps", "0"], ["logging_steps = 0", ">= 1"]),
    (["--micro-batch-size", "0"], ["micro_batch_size = 0"]),
    (["--prompts-per-step", "0"], ["prompts_per_step = 0"]),
    (["--top-k", "-5"], ["top_k = -5", ">= 0"]),
    (["--min-p", "2"], ["min_p = 2.0", "[0, 1]"]),
    (["--reward-weights", "1,2"], ["reward_weights = [1.0, 2.0]", "1 reward functions"]),  # drill: one
    (["--task", "arithmetic", "--reward-weights", "1,2"], ["reward_weights = [1.0, 2.0]", "5 reward functions"]),
    (["--reward-weights", "nan,1,1,1,1"], ["`reward_weights`", "nan"]),
    (["--reward-funcs", "xml_count,correctness", "--reward-weights", "1"], ["reward_weights = [1.0]", "2 reward"]),
    (["--max-steps", "0"], ["max_steps = 0", ">= 1"]),
    (["--max-steps", "-1"], ["max_steps = -1"]),
    (["--num-iterations", "0"], ["num_iterations = 0"]),
    (["--epsilon", "-1"], ["epsilon = -1.0"]),
    (["--epsilon-high", "-0.1"], ["epsilon_high = -0.1"]),
    (["--delta", "1.1"], ["delta = 1.1", "1 + epsilon_high"]),
    (["--top-p", "0"], ["top_p = 0.0", "(0, 1]"]),
    (["--top-p", "1.5"], ["top_p = 1.5"]),
    (["--run-name", ""], ["run_name = ''"]),
    (["--run-name", "."], ["run_name = '.'"]),
    (["--run-name", ".."], ["run_name = '..'"]),
    (["--run-name", "outputs/.."], ["run_name = 'outputs/..'"]),
    (["--max-completion-length", "0"], ["max_completion_length = 0"]),
    (["--beta", "-0.1"], ["beta = -0.1"]),
    (["--top-entropy-quantile", "0"], ["top_entropy_quantile = 0.0", "(0, 1]"]),
    (["--top-entropy-quantile", "1.5"], ["top_entropy_quantile = 1.5"]),
    (["--overlong-cache-length", "65"], ["overlong_cache_length = 65", "max_completion_length"]),
    (["--overlong-cache-length", "-1"], ["overlong_cache_length = -1"]),
    (["--adv-eps", "-1"], ["adv_eps = -1.0"]),
    (["--max-resample-rounds", "-1"], ["max_resample_rounds = -1"]),
    (["--warmup-ratio", "1.5"], ["warmup_ratio = 1.5"]),
    (["--weight-decay", "-0.1"], ["weight_decay = -0.1"]),
    (["--max-grad-norm", "-1"], ["max_grad_norm = -1.0"]),
    (["--max-skipped-steps", "0"], ["max_skipped_steps = 0"]),
    (["--save-steps", "-1"], ["save_steps = -1"]),
    (["--save-total-limit", "0"], ["save_total_limit = 0"]),
    (["--lora-r", "0"], ["lora_r = 0"]),
    (["--lora-alpha", "0"], ["lora_alpha = 0"]),
    (["--lora-dropout", "1"], ["lora_dropout = 1.0"]),
    (["--lora-target-modules", "[]"], ["lora_target_modules = []"]),
    (["--load-in-4bit", "--use-lora", "false"], ["use_lora = False", "load_in_4bit"]),
    (["--dtype", "float8"], ["dtype = 'float8'", "float32"]),
    (["--device", "gpu"], ["device = 'gpu'"]),
    (["--model", ""], ["model = ''"]),
    (["--dataset-limit", "0"], ["dataset_limit = 0"]),
    (["--task", "chess"], ["task = 'chess'", "unknown task"]),
    (["--reward-funcs", "nope"], ["reward_funcs = ['nope']", "unknown reward function"]),
    (["--loss-type", "dr_grpo", "--token-normalizer", "selected_tokens"], ["token_normalizer = 'selected_tokens'",
                                                                          "dr_grpo"]),
    (["--loss-type", "luspo", "--token-normalizer", "selected_tokens", "--importance-sampling-level", "sequence"],
     ["token_normalizer = 'selected_tokens'", "luspo"]),
    (["--loss-type", "ppo"], ["loss_type", "'ppo'", "cispo"]),
    (["--loss-type", "luspo"], ["importance_sampling_level = 'token'", "sequence", "luspo"]),
    (["--loss-type", "vespo", "--importance-sampling-level", "sequence"], ["importance_sampling_level = 'sequence'",
                                                                           "token", "vespo"]),
    (["--loss-type", "cispo", "--epsilon-high", "5", "--importance-sampling-level", "sequence"],
     ["importance_sampling_level = 'sequence'", "cispo"]),
    (["--loss-type", "cispo"], ["epsilon_high = 0.28", ">= 1", "cispo", "5.0"]),
    (["--loss-type", "sapo", "--delta", "2"], ["delta = 2.0", "sapo"]),
    (["--sapo-temperature-neg", "0"], ["sapo_temperature_neg = 0.0", "> 0"]),
    (["--sapo-temperature-pos", "-1"], ["sapo_temperature_pos = -1.0"]),
    (["--vespo-k-pos", "-1"], ["vespo_k_pos = -1.0", ">= 0"]),
    (["--vespo-lambda-neg", "0"], ["vespo_lambda_neg = 0.0", "> 0"]),
    (["--off-policy-mask-threshold", "-0.1"], ["off_policy_mask_threshold = -0.1", ">= 0"]),
    (["--sampler-dtype", "bfloat16", "--use-vllm", "true"], ["sampler_dtype = 'bfloat16'", "use_vllm", "float32"]),
    (["--sampler-dtype", "bfloat16", "--dtype", "bfloat16"], ["sampler_dtype = 'bfloat16'", "float32 weights",
                                                              "dtype = bfloat16"]),
    (["--sampler-dtype", "bfloat16", "--loss-type", "vespo"], ["vllm_importance_sampling_mode = 'sequence_mask'",
                                                               "token_mask", "vespo"]),
    (["--sampler-dtype", "float16"], ["sampler_dtype", "float16", "bfloat16"]),
    (["--use-bias-correction-kl", "maybe"], ["use_bias_correction_kl", "maybe"]),
    (["--seed", "-1"], ["seed = -1"]),
    (["--stop-strings", '[""]'], ["stop_strings = ['']"]),
    (["--entropy-coef", "-1"], ["entropy_coef = -1.0"]),
    (["--num-generations"], ["--num-generations", "expected one argument"]),
    (["--config", "{tmp}/latin1.json"], ["latin1.json", "UTF-8"]),
    (["--config", "{tmp}/empty.yaml"], ["empty.yaml", "empty config file"]),
    (["--config", "{tmp}/comments.yaml"], ["comments.yaml", "empty config file"]),
    (["--config", "{tmp}/empty.json"], ["empty.json", "empty config file"]),
    (["--config", "{tmp}/nan.json"], ["nan.json", "`learning_rate`", "nan"]),
    (["--config", "{tmp}/grpo_g1.yaml"], ["num_generations = 1"]),
]
SEGA = [  # train_sega.py
    (["--top-p", "0"], ["top_p = 0.0", "(0, 1]"]),
    (["--top-p", "1.5"], ["top_p = 1.5"]),
    (["--epsilon", "-1"], ["epsilon = -1.0"]),
    (["--epsilon-high", "-1"], ["epsilon_high = -1.0"]),
    (["--top-k", "-5"], ["top_k = -5"]),
    (["--min-p", "2"], ["min_p = 2.0"]),
    (["--learning-rate", "-1"], ["learning_rate = -1.0"]),
    (["--lr", "nan"], ["`learning_rate`", "nan"]),
    (["--logging-steps", "0"], ["logging_steps = 0"]),
    (["--top-m", "2.5"], ["top_m = 2.5", "whole"]),
    (["--iqr-factor", "-1"], ["iqr_factor = -1.0"]),
    (["--lambda_fork", "nan"], ["`lambda_fork`", "nan"]),
    (["--lambda_fork", "-1"], ["lambda_fork = -1.0"]),
    (["--tau", "inf"], ["`tau`", "inf"]),
    (["--markers", '[""]'], ["markers = ['']"]),
    (["--run-name", ""], ["run_name = ''"]),
    (["--out_dir", ".."], ["run_name = '..'"]),
    (["--eval-batch-size", "0"], ["eval_batch_size = 0"]),
    (["--dataset-limit", "0"], ["dataset_limit = 0"]),
    (["--stop-strings", '[""]'], ["stop_strings = ['']"]),
    (["--warmup-ratio", "-0.5"], ["warmup_ratio = -0.5"]),
    (["--seed", "-5"], ["seed = -5"]),
    (["--save-total-limit", "0"], ["save_total_limit = 0"]),
    (["--lora-dropout", "-0.1"], ["lora_dropout = -0.1"]),
    (["--config", "{tmp}/sega_top_p.yaml"], ["top_p = 0.0"]),
]
SFT = [  # train_sft.py
    (["--learning-rate", "nan"], ["`learning_rate`", "nan"]),
    (["--lr", "-1"], ["learning_rate = -1.0"]),
    (["--epochs", "0"], ["epochs = 0"]),
    (["--max-steps", "-1"], ["max_steps = -1"]),
    (["--warmup-ratio", "2"], ["warmup_ratio = 2.0"]),
    (["--max-grad-norm", "-1"], ["max_grad_norm = -1.0"]),
    (["--run-name", ""], ["run_name = ''"]),
    (["--out_dir", ".."], ["run_name = '..'"]),
    (["--lora-r", "0"], ["lora_r = 0"]),
    (["--weight-decay", "nan"], ["`weight_decay`", "nan"]),
    (["--max-skipped-steps", "0"], ["max_skipped_steps = 0"]),
    (["--dtype", "float8"], ["dtype = 'float8'"]),
    (["--seed", "-1"], ["seed = -1"]),
    (["--config", "{tmp}/empty.yaml"], ["empty config file"]),
]
OTHERS = [  # (script, arguments, fragments)
    ("eval_grpo", ["--reward-weights", "1,2"], ["reward_weights = [1.0, 2.0]"]),
    ("eval_grpo", ["--greedy", "false", "--top-p", "0"], ["top_p = 0.0"]),
    ("eval_grpo", ["--top-k", "-1"], ["top_k = -1"]),
    ("evaluate_model", ["--top-p", "1.5"], ["top_p = 1.5"]),
    ("evaluate_model", ["--seed", "-1"], ["seed = -1"]),
    ("eval_pref_accuracy", ["--beta", "nan"], ["`beta`", "nan"]),
    ("eval_pref_accuracy", ["--limit", "0"], ["limit = 0"]),
    ("eval_sql", ["--judge-timeout-s", "0"], ["judge_timeout_s = 0.0"]),
    ("eval_score_model", ["--top-k", "-3"], ["top_k = -3"]),
    ("make_cot_dataset", ["--corruption-prob", "1.5"], ["corruption_prob = 1.5"]),
    ("demo_reasoncheck", ["--num-examples", "0"], ["num_examples = 0"]),
    ("cleanse_sql_dataset", ["--time-limit-s", "0"], ["time_limit_s = 0.0"]),
    ("smoke_model", ["--max-new-tokens", "0"], ["max_new_tokens = 0"]),
]
TWO_RANKS = [  # run with torchrun's WORLD_SIZE=2 in the environment
    ("train_grpo", ["--prompts-per-step", "3"], ["prompts_per_step = 3", "WORLD_SIZE = 2"]),
    ("train_sega", ["--batch-size", "3"], ["batch_size = 3", "WORLD_SIZE = 2"]),
    ("train_sega", ["--sharding", "fsdp2", "--eval-dataset", "bundled"], ["eval_dataset = 'bundled'", "fsdp2"]),
]
SHIPPED = [  # (config, script reading a section of it)
    ("gsm8k.json", "train_sft"), ("gsm8k.json", "evaluate_model"), ("gsm8k.json", "train_grpo"),
    ("reasoncheck.json", "train_grpo"), ("reasoncheck.json", "demo_reasoncheck"),
    ("recipe_gsm8k_format.json", "train_grpo"), ("recipe_gsm8k_format.json", "eval_grpo"),
    ("recipe_score_model.json", "make_cot_dataset"), ("recipe_score_model.json", "train_grpo"),
    ("recipe_score_model.json", "eval_grpo"), ("recipe_text_to_sql.json", "train_grpo"),
    ("recipe_text_to_sql.json", "eval_grpo"), ("score_model.json", "make_cot_dataset"),
    ("score_model.json", "train_grpo"), ("score_model.json", "eval_score_model"), ("sega_demo.yaml", "train_sft"),
    ("sega_demo.yaml", "train_sega"), ("sega_demo.yaml", "eval_pref_accuracy"),
    ("text_to_sql.json", "cleanse_sql_dataset"), ("text_to_sql.json", "train_grpo"), ("text_to_sql.json", "eval_sql"),
]
CASES = ([("train_grpo", a, m) for a, m in GRPO] + [("train_sega", a, m) for a, m in SEGA]
         + [("train_sft", a, m) for a, m in SFT] + OTHERS)


class Accepted(Exception):
    """parse_settings returned: the script would now go on to load its model and data."""


_modules = {}


def script_module(name):
    """scripts/<name>.py imported as a module (registered, so its dataclasses' type hints resolve)."""
    if name not in _modules:
        spec = importlib.util.spec_from_file_location(f"_validation_{name}", ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _modules[name] = module
    return _modules[name]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    return folder


def parse(script, args, files, monkeypatch):
    """Run the script up to its parse_settings call: the ConfigError's text, or the settings it accepted."""
    module = script_module(script)

    def parse_then_stop(cls, argv=None, **kwargs):
        raise Accepted(parse_settings(cls, argv, **{**kwargs, "print_config": False}))

    monkeypatch.setattr(module, "parse_settings", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *(a.replace("{tmp}", str(files)) for a in args)])
    try:
        module.main()
    except ConfigError as e:
        return str(e)
    except Accepted as e:
        return e.args[0]
    except BaseException as e:  # noqa: BLE001 - a traceback or argparse's usage text, not one line
        pytest.fail(f"{script} {args}: {type(e).__name__}: {e}")
    pytest.fail(f"{script} {args}: main() returned")


def settings_error(script, args, files, monkeypatch) -> str:
    """The one-line ConfigError of the script's own parse_settings call for `args`."""
    out = parse(script, args, files, monkeypatch)
    if not isinstance(out, str):
        pytest.fail(f"{script} {args}: accepted, the run would start with {type(out).__name__}")
    return out


@pytest.mark.parametrize("script, args, fragments", CASES, ids=[f"{s}:{' '.join(a)}" for s, a, _ in CASES])
def test_a_bad_setting_is_one_line_naming_it_before_anything_loads(script, args, fragments, files, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    message = settings_error(script, args, files, monkeypatch)
    assert "\n" not in message and all(f in message for f in fragments), message


@pytest.mark.parametrize("script, args, fragments", TWO_RANKS)
def test_a_batch_that_does_not_split_over_the_ranks_is_caught_before_torch_distributed(
        script, args, fragments, files, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; torch.distributed is not started yet
    message = settings_error(script, args, files, monkeypatch)
    assert "\n" not in message and all(f in message for f in fragments), message


@pytest.mark.parametrize("script, args, world", [
    ("train_grpo", [], 1), ("train_sega", [], 1), ("train_sft", [], 1), ("eval_grpo", [], 1),
    ("train_grpo", ["--prompts-per-step", "4"], 2), ("train_sega", ["--batch-size", "2"], 2),
    *[(script, ["--config", str(ROOT / "configs" / config)], 1) for config, script in SHIPPED],
    ("train_grpo", ["--delta", "1.28", "--max-steps", "1", "--top-p", "1", "--min-p", "0", "--save-steps", "0"], 1),
    ("train_grpo", ["--learning-rate", "1e-6", "--overlong-cache-length", "32", "--top-entropy-quantile", "1"], 1),
    ("train_grpo", ["--sampler-dtype", "bfloat16"], 1),
    ("train_grpo", ["--sampler-dtype", "bfloat16", "--loss-type", "vespo", "--vllm-importance-sampling-mode",
                    "token_mask"], 1),
    *[("train_grpo", ["--loss-type", lt, *extra], 1) for lt, extra in [
        ("cispo", ["--epsilon-high", "5.0"]), ("cispo", ["--epsilon-high", "1"]),
        ("luspo", ["--importance-sampling-level", "sequence", "--delta", "1.5"]),
        ("sapo", ["--importance-sampling-level", "sequence", "--sapo-temperature-neg", "2"]),
        ("vespo", ["--vespo-k-neg", "0", "--off-policy-mask-threshold", "0", "--use-bias-correction-kl", "true"])]],
    ("train_sega", ["--max-steps", "0", "--top-m", "3", "--final-window", "null", "--kl-coef", "0"], 1),
    ("eval_grpo", ["--greedy", "true", "--temperature", "0"], 1),
])
def test_good_settings_still_pass(script, args, world, files, monkeypatch):
    """Defaults, shipped configs, boundary values and a batch that splits over two ranks are accepted."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    out = parse(script, args, files, monkeypatch)
    assert not isinstance(out, str), f"{script} {args}: {out}"


# ------------------------------------------------------------------------------------- real processes
@pytest.fixture
def env(tmp_path):
    return dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "outputs"), GRPO_CACHE_DIR=str(tmp_path / "cache"),
                PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


SHORT = {  # keep a run that is (wrongly) accepted short
    "train_grpo": ["--model", "tiny-llama", "--task", "arithmetic", "--max-completion-length", "4", "--max-steps", "1"],
    "train_sega": ["--model", "tiny-llama", "--gen-max-new-tokens", "4", "--max-steps", "1", "--eval-dataset", ""],
    "train_sft": ["--model", "tiny-llama", "--dataset", "arithmetic", "--num-examples", "4", "--max-steps", "1"],
    "eval_grpo": ["--model", "tiny-llama", "--num-examples", "2", "--max-new-tokens", "4"],
}
PROCESSES = [
    ("train_grpo", ["--num-generations", "1"], "num_generations = 1"),
    ("train_grpo", ["--temperature", "0"], "temperature = 0.0"),
    ("train_grpo", ["--max-steps", "0"], "max_steps = 0"),
    ("train_grpo", ["--config", "{tmp}/latin1.json"], "UTF-8"),
    ("train_sega", ["--top-p", "0"], "top_p = 0.0"),
    ("train_sft", ["--learning-rate", "nan"], "`learning_rate`"),
    ("eval_grpo", ["--reward-weights", "1,2"], "reward_weights = [1.0, 2.0]"),
]


@pytest.mark.parametrize("script, args, fragment", PROCESSES)
def test_the_real_script_exits_2_with_one_line_within_5_s(script, args, fragment, env, files, tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *SHORT[script],
           *(a.replace("{tmp}", str(files)) for a in args)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], p.stderr[-3000:]
    assert seconds < 5, f"{seconds:.1f} s"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()  # no run folder, no model


def test_under_torchrun_the_error_is_printed_once(env, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "train_grpo.py"), *SHORT["train_grpo"], "--prompts-per-step", "3"]
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    ours = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode != 0 and len(ours) == 1, p.stderr[-3000:]
    assert "prompts_per_step = 3" in ours[0] and "WORLD_SIZE = 2" in ours[0], ours
    # No rank printed a traceback; the one left is torchrun's own report that its workers exited with 2.
    assert "[rank" not in p.stderr and 'train_grpo.py", line' not in p.stderr, p.stderr[-3000:]
    assert p.stderr.count("Traceback") <= 1 and "exitcode  : 2" in p.stderr, p.stderr[-3000:]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()
