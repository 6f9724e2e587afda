"""vLLM as the sampler (grpo.vllm_engine), against the trainer's own forward pass; marked `vllm`.

Run in the vLLM venv (README, vLLM): `.venv-vllm/bin/python -m pytest -q -m vllm tests`. Skipped where vLLM is
not installed (the main venv). One engine (smollm2-135m, fp32, enforce_eager) serves the module; the
end-to-end runs start their own in a subprocess.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vLLM is not installed here (VLLM=1 bash scripts/setup_env.sh)")

from grpo.models import load_model, named_model_path  # noqa: E402
from grpo.policy import completion_logprobs  # noqa: E402
from grpo.rollout import Sampling, completion_mask, encode_prompts, eos_token_ids, stop_string_positions  # noqa: E402
from grpo.vllm_engine import VLLMEngine, VLLMSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
PROMPTS = [[{"role": "user", "content": "What is 12 + 7?"}], [{"role": "user", "content": "Name three colours."}]]
TOL_LOGP = 1e-4  # issue #16: vLLM and trainer log-probs agree to 1e-4 after every sync (fp32, CPU)


@pytest.fixture(scope="module")
def path():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return str(named_model_path(MODEL))


@pytest.fixture(scope="module")
def engine(path):
    e = VLLMEngine.start(VLLMSettings(use_vllm=True, vllm_enforce_eager=True, vllm_max_model_length=1024), path,
                         dtype="float32", seed=0)
    yield e
    e.close()


@pytest.fixture()
def lora(path):
    model, tok = load_model(path, use_lora=True, lora_r=8, lora_alpha=16)
    return model, tok


def trainer_logp(model, r, temperature):
    with torch.no_grad():
        return completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                   temperature=temperature)[0]


def sample(engine, model, tok, *, seed=1, **sampling):
    ids, mask = encode_prompts(tok, PROMPTS)
    s = Sampling(**{"max_new_tokens": 24, "temperature": 0.9, **sampling})
    return engine.sample(tok, ids, mask, G=3, sampling=s, seed=seed, eos_ids=eos_token_ids(model, tok))


def max_gap(a, b, mask):
    return (a - b).abs()[mask].max().item()


def test_samples_are_the_rollout_and_their_logprobs_are_the_trainers(engine, lora):
    model, tok = lora
    engine.sync(model)
    r = sample(engine, model, tok)
    N, T = r.completion_ids.shape
    assert N == 6 and r.prompt_ids.shape[0] == 6 and r.sampler == "vllm"
    eos = eos_token_ids(model, tok)
    cmask, ended = completion_mask(r.completion_ids.masked_fill(~r.completion_mask, -1), eos_ids=eos)
    assert torch.equal(cmask & r.completion_mask, r.completion_mask) and torch.equal(~ended, r.truncated)
    assert ((r.lengths == 24) | ~r.truncated).all()  # only full-length rows are truncated
    assert max_gap(r.logp, trainer_logp(model, r, 0.9), r.completion_mask) < TOL_LOGP


def test_same_seed_same_samples_other_seed_other_samples(engine, lora):
    model, tok = lora
    a, b, c = (sample(engine, model, tok, seed=s) for s in (5, 5, 6))
    assert a.completions == b.completions and a.completions != c.completions
    assert len(set(a.completions[:3])) > 1  # the G samples of one prompt differ


def test_top_k_top_p_min_p_and_stop_strings_are_applied(engine, lora):
    model, tok = lora
    r = sample(engine, model, tok, top_k=1, max_new_tokens=12)  # top-k 1: greedy, so the G rows agree
    assert r.completions[0] == r.completions[1] == r.completions[2]
    assert r.logp[r.completion_mask].abs().max().item() < 1e-5  # the truncated sampler: p = 1 [V3]
    r = sample(engine, model, tok, stop_strings=(" ",), max_new_tokens=16, temperature=1.0, min_p=0.05, top_p=0.9)
    at = stop_string_positions(tok, r.completion_ids, [" "])
    has = at >= 0
    assert has.any()
    assert torch.equal(r.lengths[has], at[has] + 1) and not r.truncated[has].any()


def vllm_scores(engine, r):
    """vLLM's log-probs (T = 1) of the fixed completions of rollout r: each prompt + completion as a prompt."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = torch.zeros_like(r.logp)
    for i in range(r.completion_ids.shape[0]):
        comp = r.completion_ids[i][r.completion_mask[i]].tolist()
        prompt = r.prompt_ids[i][r.prompt_mask[i]].tolist()
        res = engine.llm.generate([TokensPrompt(prompt_token_ids=prompt + comp)],
                                  SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0), use_tqdm=False)[0]
        scored = res.prompt_logprobs[len(prompt):]
        out[i, :len(comp)] = torch.tensor([d[t].logprob for d, t in zip(scored, comp)])
    return out


def test_sync_after_a_large_step_makes_vllm_the_trainer_again(engine, lora):
    """After an optimiser step with a large LR, vLLM's log-probs of fixed completions differ from the
    trainer's until the sync and equal them (1e-4) after it (the prefix cache serves no stale KV)."""
    model, tok = lora
    engine.sync(model)
    fixed = sample(engine, model, tok, temperature=1.0)
    m = fixed.completion_mask
    assert max_gap(vllm_scores(engine, fixed), trainer_logp(model, fixed, 1.0), m) < TOL_LOGP
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=2.0)
    logp = completion_logprobs(model, fixed.prompt_ids, fixed.prompt_mask, fixed.completion_ids, m)[0]
    (-(logp * m).sum()).backward()
    opt.step()
    after = trainer_logp(model, fixed, 1.0)
    assert max_gap(after, fixed.logp, m) > 0.1  # the step moved the policy
    assert max_gap(vllm_scores(engine, fixed), after, m) > 0.1  # vLLM still samples the old one
    assert engine.sync(model) > 0
    assert max_gap(vllm_scores(engine, fixed), after, m) < TOL_LOGP
    fresh = sample(engine, model, tok, temperature=1.0)  # and what it samples now is the trainer's policy
    assert max_gap(fresh.logp, trainer_logp(model, fresh, 1.0), fresh.completion_mask) < TOL_LOGP


def test_full_fine_tune_sync(engine, path):
    model, tok = load_model(path, use_lora=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    engine.sync(model)
    r = sample(engine, model, tok, temperature=1.0)
    assert max_gap(r.logp, trainer_logp(model, r, 1.0), r.completion_mask) < TOL_LOGP


# ------------------------------------------------------------------------------------- the real script
def run_script(tmp_path, *flags, run_name="v"):
    env = dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "out"), PYTHONPATH=str(ROOT),
               VLLM_CPU_KVCACHE_SPACE="2", OMP_NUM_THREADS="2")
    args = [sys.executable, str(ROOT / "scripts" / "train_grpo.py"), "--model", MODEL, "--task", "arithmetic", "--use-vllm", "true",
            "--vllm-enforce-eager", "true", "--vllm-max-model-length", "1024", "--prompts-per-step", "2",
            "--num-generations", "4", "--max-completion-length", "16", "--learning-rate", "1e-3",
            "--run-name", run_name, *flags]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def test_train_grpo_through_vllm_logs_the_mismatch_and_syncs_every_step(tmp_path):
    out = run_script(tmp_path, "--max-steps", "3", "--save-steps", "3")
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "v" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["time/sync_weights"] > 0  # before every sampling: the first, then after each step
        assert 0 <= row["sampling/sampling_logp_difference/mean"] < 1e-3  # fp32 on both sides
        assert row["sampling/sampling_logp_difference/max"] < 1e-2
        assert 0.9 < row["sampling/importance_sampling_ratio/mean"] < 1.1
        assert row["sampling_entropy"] > 0  # from the trainer's forward: vLLM records none
        assert row["skipped_steps"] == 0
    assert "vLLM engine started" in out.stderr
    assert (tmp_path / "out" / "v" / "final" / "adapter_model.safetensors").is_file()


def test_two_ranks_each_sample_through_their_own_engine_and_stay_replicas(tmp_path):
    """torchrun, 2 ranks (gloo), seeds differing per rank: every rank's engine samples its share; the
    checkpoint's replica check (grpo.distributed.check_replicas) passes; the job exits 0 (grpo.vllm_engine [V8])."""
    env = dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "out"), PYTHONPATH=str(ROOT), VLLM_CPU_KVCACHE_SPACE="1",
               OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    args = [str(ROOT / "scripts" / "train_grpo.py"), "--model", MODEL, "--task", "arithmetic", "--use-vllm", "true", "--vllm-enforce-eager",
            "true", "--vllm-max-model-length", "1024", "--prompts-per-step", "2", "--num-generations", "4",
            "--max-completion-length", "16", "--max-steps", "2", "--save-steps", "2", "--run-name", "d"]
    out = subprocess.run(torchrun + args, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "out" / "d"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["sampling/sampling_logp_difference/max"] < 1e-2 for r in rows)
    state = json.loads((run / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(set(state["trainable_sha256"])) == 1  # replicas, checked at the save
    assert "Traceback" not in out.stderr


def test_resume_through_vllm_reproduces_the_uninterrupted_run(tmp_path):
    """Seeds come from the checkpointed generator and the first sampling after a resume follows a sync, so a
    resumed run samples what the uninterrupted one sampled (grpo.vllm_engine [V6])."""
    assert run_script(tmp_path, "--max-steps", "3", run_name="full").returncode == 0
    assert run_script(tmp_path, "--max-steps", "1", run_name="cut").returncode == 0
    again = run_script(tmp_path, "--max-steps", "3", "--resume", run_name="cut")
    assert again.returncode == 0, again.stderr[-3000:]

    def stable(name):
        rows = [json.loads(line) for line in (tmp_path / "out" / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_second"))} for r in rows]

    full, cut = stable("full"), stable("cut")
    assert [r["step"] for r in cut] == [1, 2, 3]
    for a, b in zip(full, cut):  # the same samples; float noise of a fresh engine's first batch allowed
        assert a["completion_length"] == b["completion_length"] and a["reward"] == b["reward"], (a, b)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_an_engine_that_cannot_start_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}  # size from the fraction
    env.update(GRPO_OUTPUT_ROOT=str(tmp_path / "out"), PYTHONPATH=str(ROOT))
    args = [sys.executable, str(ROOT / "scripts" / "train_grpo.py"), "--model", MODEL, "--task", "arithmetic", "--use-vllm", "true",
            "--vllm-enforce-eager", "true", "--vllm-gpu-memory-utilization", "0.01", "--max-steps", "1"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: vLLM could not start on") and "VLLM_CPU_KVCACHE_SPACE" in last
    assert "Traceback" not in out.stderr
