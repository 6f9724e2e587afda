"""FSDP2 sharding (issue #15): two CPU processes (torchrun, gloo) with sharded weights make the same update
as one unsharded process over the same global batch, and sample the same tokens."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo.run import read_metrics
from grpo_helpers import assert_same_update

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fsdp_update_worker.py"


def _launch(nproc: int, out: Path, cache: Path, sharding: str, use_lora: bool) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(out), str(cache), sharding, str(int(use_lora))]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_fsdp2_on_two_ranks_makes_the_same_update_as_one_process(tmp_path, use_lora):
    """float64 to 1e-10: gradient (the sum convention, grpo.sharding [S2]) and weights after AdamW.

    final/, saved from the gathered shards, reloads with the live model's log-probs. Sampling under fsdp2 gathers each FSDP unit once per rollout, not once per decoding step [S3], and draws
    the same tokens with the same log-probs as the unsharded model at the same seed.
    """
    cache = Path(os.environ.get("GRPO_TEST_CACHE", tmp_path / "cache"))
    one = _launch(1, tmp_path / "one.pt", cache, "none", use_lora)
    two = _launch(2, tmp_path / "two.pt", cache, "fsdp2", use_lora)
    assert torch.equal(one["completion_ids"], two["completion_ids"])
    torch.testing.assert_close(two["logp"], one["logp"], atol=1e-10, rtol=1e-10)
    assert two["sampling_gathers"] <= two["units"], two  # once per unit, not per token
    assert one["completion_ids"].shape[1] > 2  # several decoding steps were sampled
    assert_same_update(two["state"], one["state"])
    assert two["final_logp_max_diff"] < 1e-10  # final/ reloads (from_pretrained) as the live sharded model
    if not use_lora:
        assert len([k for k in one["state"] if not k.endswith(".grad")]) > 10  # every weight trained


# ------------------------------------------------------------------------------------- the real scripts
GRPO_TINY = ["--model", "tiny-llama", "--task", "arithmetic", "--prompts-per-step", "4", "--num-generations", "2",
             "--max-completion-length", "8", "--lora-dropout", "0", "--learning-rate", "1e-3", "--save-steps", "1",
             "--save-total-limit", "10", "--sharding", "fsdp2"]


def _env(tmp_path):
    return dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "outputs"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                GRPO_CACHE_DIR=str(os.environ.get("GRPO_TEST_CACHE", tmp_path / "cache")))


def _torchrun(script, args, env, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "scripts" / script), *map(str, args)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.mark.parametrize("use_lora", ["false", "true"], ids=["full", "lora"])
def test_train_grpo_fsdp2_resumes_exactly_and_saves_a_loadable_final(tmp_path, use_lora):
    """2 ranks, each with its own seed: a run stopped after step 2 and resumed from its sharded checkpoint
    (weights and AdamW state gathered by rank 0, re-sharded on load) logs the uninterrupted run's metrics."""
    from grpo.models import load_model
    from grpo.run import read_metrics

    env, args = _env(tmp_path), [*GRPO_TINY, "--use-lora", use_lora, "--max-steps", 3]
    _torchrun("train_grpo.py", [*args, "--run-name", "full"], env)
    _torchrun("train_grpo.py", [*args, "--run-name", "cut"], env)
    import shutil
    shutil.rmtree(tmp_path / "outputs" / "cut" / "checkpoints" / "step-000003")  # as if stopped after step 2
    again = _torchrun("train_grpo.py", [*args, "--run-name", "cut", "--resume"], env)
    assert "resumed from" in again.stderr

    def stable(name):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_second"))}
                for r in read_metrics(tmp_path / "outputs" / name / "metrics.jsonl")]

    assert [r["step"] for r in stable("cut")] == [1, 2, 3]
    assert stable("cut") == stable("full")
    model, _ = load_model(str(tmp_path / "outputs" / "full" / "final"), cache_dir=env["GRPO_CACHE_DIR"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


def test_train_sft_fsdp2_equals_one_process_in_float64(tmp_path):
    """A full fine-tune: 2 sharded ranks and one unsharded process write the same final/ weights."""
    from safetensors.torch import load_file

    env = _env(tmp_path)
    args = ["--mode", "pairs", "--model", "tiny-llama", "--dataset", "bundled", "--num-examples", 8,
            "--dtype", "float64", "--batch-size", 2, "--grad-accum", 2, "--max-steps", 2, "--learning-rate", 1e-3,
            "--lr-scheduler", "constant", "--warmup-ratio", 0, "--use-lora", "false"]
    _torchrun("train_sft.py", [*args, "--run-name", "one"], env, nproc=1)
    _torchrun("train_sft.py", [*args, "--run-name", "two", "--sharding", "fsdp2"], env, nproc=2)
    a = load_file(tmp_path / "outputs" / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "outputs" / "two" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-10, msg=k)


def test_train_sega_runs_under_fsdp2(tmp_path):
    """SEGA's sampling, entropy scoring and update go through grpo.sharding too (LoRA, 2 ranks)."""
    env = _env(tmp_path)
    args = ["--model", "tiny-llama", "--k", "2", "--batch-size", "2", "--gen-max-new-tokens", "6", "--lora-dropout",
            "0", "--learning-rate", "1e-2", "--eval-dataset", "", "--dataset-limit", "4", "--save-steps", "1",
            "--max-steps", "2", "--run-name", "s", "--sharding", "fsdp2"]
    _torchrun("train_sega.py", args, env)
    assert (tmp_path / "outputs" / "s" / "final" / "adapter_model.safetensors").is_file()


def test_a_full_fine_tune_with_a_separate_kl_reference_gives_the_unsharded_runs_metrics(tmp_path):
    """beta > 0 without LoRA loads a second, frozen model as the KL reference; under fsdp2 it is sharded too.
    A length reward gives every group a signal, so the policy moves and the KL of steps 2-3 is not 0."""
    (tmp_path / "lenreward.py").write_text(
        "def reward(prompts, completions, **_):\n"
        "    return [len(c[0]['content']) / 10 for c in completions]\n")
    env = dict(_env(tmp_path), PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
    args = ["--model", "tiny-llama", "--use-lora", "false", "--beta", "0.04", "--prompts-per-step", "2",
            "--num-generations", "4", "--max-completion-length", "8", "--max-steps", "3", "--learning-rate", "1e-3",
            "--reward-funcs", "lenreward:reward"]
    rows = {}
    for sharding in ("none", "fsdp2"):
        _torchrun("train_grpo.py", [*args, "--sharding", sharding, "--run-name", sharding], env)
        rows[sharding] = read_metrics(tmp_path / "outputs" / sharding / "metrics.jsonl")
    assert [r["step"] for r in rows["fsdp2"]] == [1, 2, 3] and rows["none"][-1]["kl"] > 1e-4
    for a, b in zip(rows["none"], rows["fsdp2"]):
        for key in ("reward", "kl", "grad_norm", "loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
