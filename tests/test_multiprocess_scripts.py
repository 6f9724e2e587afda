"""The real training scripts under torchrun: 2 gloo ranks on the CPU, each rank with its own seed.

What DistributedDataParallel would guarantee, checked on what users run (grpo.distributed):
- the replicas stay bit-identical (a fresh LoRA adapter is random per rank until rank 0's is broadcast):
  every checkpoint records each rank's sha256 of its trainable weights;
- one update does not depend on the rank count (SFT here, in float64; GRPO's in test_ddp.py);
- `--resume` continues each rank's own RNG stream, so the metrics equal the uninterrupted run's;
- ranks that see different checkpoints (nodes without a shared filesystem) stop with one clear error;
- a fresh model cache is built once, not by every rank at the same time.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import distributed as dd
from grpo.run import read_metrics

ROOT = Path(__file__).resolve().parents[1]
GRPO_TINY = ["--model", "tiny-llama", "--task", "arithmetic", "--prompts-per-step", "4", "--num-generations", "2",
             "--max-completion-length", "8", "--lora-dropout", "0", "--learning-rate", "1e-2", "--save-steps", "1",
             "--save-total-limit", "10"]
SEGA_TINY = ["--model", "tiny-llama", "--k", "2", "--batch-size", "2", "--gen-max-new-tokens", "6",
             "--lora-dropout", "0", "--learning-rate", "1e-2", "--eval-dataset", "", "--dataset-limit", "4",
             "--save-steps", "1"]
VOLATILE = ("time/", "tokens_per_second", "seconds")


def _env(tmp_path, cache=None, **extra):
    return dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "outputs"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                GRPO_CACHE_DIR=str(cache or os.environ.get("GRPO_TEST_CACHE", tmp_path / "cache")), **extra)


def torchrun(script, args, env, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "scripts" / script), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def replicas(run_dir: Path) -> dict[int, list[str]]:
    """step -> the sha256 of every rank's trainable weights recorded in that checkpoint."""
    out = {}
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*")):
        info = json.loads((ckpt / "trainer_state.json").read_text())
        out[info["step"]] = info["trainable_sha256"]
    return out


def assert_identical_replicas(run_dir: Path, steps: list[int], cache) -> None:
    seen = replicas(run_dir)
    assert sorted(seen) == steps
    for step, prints in seen.items():
        assert len(prints) == 2 and prints[0] == prints[1], f"step {step}: ranks differ {prints}"
    # the recorded fingerprint is that of the saved adapter: load final/ as a trainable adapter again
    from grpo.models import load_model

    model, _ = load_model(str(run_dir / "final"), cache_dir=cache)
    assert dd.fingerprint([p for p in model.parameters() if p.requires_grad]) == seen[steps[-1]][0]


def test_grpo_on_two_ranks_keeps_identical_replicas_builds_the_cache_once_and_resumes_exactly(tmp_path):
    cache = tmp_path / "fresh-cache"  # every rank asks for tiny-llama at once
    full = torchrun("train_grpo.py", [*GRPO_TINY, "--max-steps", 3, "--run-name", "full"], _env(tmp_path, cache))
    assert full.returncode == 0, full.stderr[-4000:]
    assert full.stderr.count("building the named model tiny-llama") == 1, full.stderr[-4000:]
    assert_identical_replicas(tmp_path / "outputs" / "full", [1, 2, 3], cache)

    env = _env(tmp_path, cache)
    cut = torchrun("train_grpo.py", [*GRPO_TINY, "--max-steps", 3, "--run-name", "cut"], env)
    assert cut.returncode == 0, cut.stderr[-4000:]
    for name in ("step-000003",):  # as if the run had stopped after step 2
        import shutil
        shutil.rmtree(tmp_path / "outputs" / "cut" / "checkpoints" / name)
    again = torchrun("train_grpo.py", [*GRPO_TINY, "--max-steps", 3, "--run-name", "cut", "--resume"], env)
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-4000:]
    want = stable(read_metrics(tmp_path / "outputs" / "full" / "metrics.jsonl"))
    got = stable(read_metrics(tmp_path / "outputs" / "cut" / "metrics.jsonl"))
    assert [r["step"] for r in got] == [1, 2, 3]
    assert got == want  # rank 1 sampling rank 0's restored stream would change step 3


def test_held_out_evaluation_on_two_ranks_equals_one_process_on_the_final_model(tmp_path):
    env = {**_env(tmp_path), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}  # grpo_helpers' reward
    task = ["--task", "drill", "--reward-funcs", "grpo_helpers:vowel_fraction"]
    out = torchrun("train_grpo.py", [*GRPO_TINY, *task, "--max-steps", 2, "--run-name", "ev", "--eval-steps", 2,
                                     "--eval-num-examples", 7, "--eval-batch-size", 2], env)  # 4 + 3 rows
    assert out.returncode == 0, out.stderr[-4000:]
    rows = stable(read_metrics(tmp_path / "outputs" / "ev" / "eval.jsonl"))
    assert [r["step"] for r in rows] == [0, 2] and rows[-1]["num_examples"] == 7
    args = [*task, "--num-examples", 7, "--model-path", tmp_path / "outputs" / "ev" / "final", "--batch-size", 2,
            "--max-new-tokens", 8, "--output-file", tmp_path / "one.json"]
    one = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_grpo.py"), *map(str, args)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    summary = json.loads((tmp_path / "one.json").read_text())
    assert {k: summary[k] for k in rows[-1] if k != "step"} == {k: v for k, v in rows[-1].items() if k != "step"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resume_stops_with_one_error_when_a_node_sees_no_checkpoint(tmp_path):
    """Two 'nodes' without a shared filesystem: each rank has its own outputs folder, only rank 0's holds
    the checkpoint. Without the agreement rank 0 resumed at step 1, rank 1 started at 0, and they hung."""
    env = _env(tmp_path)
    first = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_grpo.py"), *GRPO_TINY, "--max-steps", "1",
                            "--run-name", "r"], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    port = _free_port()
    procs = []
    for rank, root in enumerate([tmp_path / "outputs", tmp_path / "node1-outputs"]):
        node = dict(env, GRPO_OUTPUT_ROOT=str(root), RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2",
                    LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_grpo.py"), *GRPO_TINY,
                                       "--max-steps", "2", "--run-name", "r", "--resume"], env=node,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errs
    lines = [line for e in errs for line in e.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, errs  # printed once, by rank 0
    assert "rank 1: no checkpoint" in lines[0] and "step-000001" in lines[0] and "shared" in lines[0]
    assert "Traceback" not in "".join(errs)


def test_sega_on_two_ranks_keeps_identical_replicas(tmp_path):
    env = _env(tmp_path)
    out = torchrun("train_sega.py", [*SEGA_TINY, "--max-steps", 2, "--run-name", "s"], env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert_identical_replicas(tmp_path / "outputs" / "s", [1, 2], env["GRPO_CACHE_DIR"])


def test_sft_update_does_not_depend_on_the_rank_count_in_float64(tmp_path):
    """4 examples per step: one process runs micro-batches (e0, e1), (e2, e3); two ranks run (e0, e2) and
    (e1, e3) and sum gradients. The same weights to float64 rounding, or the split changed the update."""
    env = _env(tmp_path)
    args = ["--mode", "pairs", "--model", "tiny-llama", "--dataset", "bundled", "--num-examples", 8,
            "--dtype", "float64", "--batch-size", 2, "--grad-accum", 2, "--max-steps", 2, "--learning-rate", 1e-2,
            "--lr-scheduler", "constant", "--warmup-ratio", 0, "--lora-dropout", 0]
    one = torchrun("train_sft.py", [*args, "--run-name", "one"], env, nproc=1)
    two = torchrun("train_sft.py", [*args, "--run-name", "two"], env, nproc=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-4000:]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "outputs" / "one" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "outputs" / "two" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(v.dtype == torch.float64 for v in a.values())
    moved = [k for k in a if "lora_B" in k and a[k].abs().sum() > 0]
    assert moved, "the adapter did not move"
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-10, msg=k)
    m1, m2 = (stable(read_metrics(tmp_path / "outputs" / n / "metrics.jsonl")) for n in ("one", "two"))
    assert [r["step"] for r in m2] == [1, 2]
    for r1, r2 in zip(m1, m2):
        assert r1.keys() == r2.keys()
        for k in r1:
            assert r2[k] == pytest.approx(r1[k], rel=1e-9, abs=1e-12), k
