"""Nothing silently wrong with non-finite values (issue #13 items 3, 6a, 6b): rewards, steps, saves, metrics.

Before: one `inf` reward gave NaN advantages and a saved NaN model with exit 0; metrics.jsonl held bare
`Infinity`; a clipped token with a log-ratio above ~88 (fp32) had a NaN gradient; `resample` with
`scale_rewards=batch` trained replaced groups with another batch's std.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo.advantages import group_advantages, weighted_rewards, zero_std_groups
from grpo.checkpoint import save_model
from grpo.config import UserError
from grpo.loss import policy_loss
from grpo.optim import GuardedStep, NonFiniteStop
from grpo.run import MetricsWriter
from grpo.tasks import Task, task_rewards
from grpo_helpers import make_trainer, toy_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Path(os.environ.get("GRPO_TEST_CACHE", tmp_path_factory.mktemp("models")))


# ------------------------------------------------------------------------------------------ 6(b) loss
@pytest.mark.parametrize("level, delta, adv", [("token", None, 1.0), ("token", 3.0, -1.0), ("sequence", None, 1.0),
                                               ("token", None, 0.0)])
def test_clipped_token_with_a_huge_log_ratio_has_a_finite_loss_and_the_reference_gradient(level, delta, adv):
    """lp_θ − lp_old ≈ 100 overflows exp in fp32 (GSPO: its mean too); the token is clipped (A ≥ 0, or A < 0 beyond δ), so its true
    gradient is 0 and the loss is the clip value: both must come out exactly so, not NaN."""
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -1.1]], requires_grad=True)
    old = torch.tensor([[-100.5, -100.2, -101.9], [-0.3, -0.6, -1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    A = torch.tensor([adv, 0.5])
    kw = dict(loss_type="dapo", eps_low=0.2, eps_high=0.28, delta=delta, importance_sampling_level=level,
              num_sequences=2, num_tokens=5, max_completion_length=3)
    loss, _ = policy_loss(logp, old, A, mask, **kw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), (loss, logp.grad)
    # float64 longhand: the huge ratio is finite there; the clip holds the first row's loss constant
    lp, o = logp.detach().double().requires_grad_(), old.double()
    if level == "token":
        ratio = torch.exp(lp - o)
    else:
        ratio = torch.exp(((lp - o) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)).expand_as(lp)
    a = A.double()[:, None]
    capped = ratio if delta is None else ratio.clamp(max=delta)
    per_token = torch.maximum(-a * capped, -a * ratio.clamp(0.8, 1.28))
    want = (per_token * mask).sum() / 5
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logp.grad.double(), lp.grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ 3. rewards
def _task(fn) -> Task:
    t = toy_task()
    return Task(name="t", rows=t.rows, reward_names=["hostile"], reward_funcs=[fn])


def test_an_inf_reward_is_an_error_naming_the_function_and_the_row():
    task = _task(lambda prompts, completions, **_: [1.0, 2.0, float("inf"), 0.5])
    with pytest.raises(UserError, match=r"'hostile' returned inf for completion 0 of prompt row 1"):
        task_rewards(task, task.rows[:2], ["a", "b", "c", "d"], G=2)
    with pytest.raises(UserError, match=r"'hostile' returned 'x' \(not a number\)"):
        task_rewards(_task(lambda p, c, **_: ["x"] * len(c)), task.rows[:1], ["a", "b"], G=2)


def test_an_inf_reward_can_be_treated_as_none_explicitly_and_nan_is_none():
    task = _task(lambda prompts, completions, **_: [1.0, float("-inf"), float("nan"), None])
    table = task_rewards(task, task.rows[:2], ["a", "b", "c", "d"], G=2, non_finite="none")
    assert table.dtype == torch.float64 and math.isinf(table[1, 0]) and table[2:].isnan().all()


def test_rewards_near_the_float32_limit_are_summed_in_float64():
    task = _task(lambda prompts, completions, **_: [3e38, 3e38, 0.0, 1.0])
    per_function = task_rewards(task, task.rows[:2], ["a", "b", "c", "d"], G=2).view(2, 2, 1)
    total = weighted_rewards(torch.cat([per_function, per_function], -1), [1.0, 1.0])  # 6e38 > fp32 max
    assert total.dtype == torch.float64 and total[0, 0].item() == 6e38
    assert torch.isfinite(group_advantages(total).float()).all()


def test_inf_rewards_as_none_train_a_finite_model_and_are_counted(cache):
    def hostile(prompts, completions, **_):
        return [float("inf") if i == 0 else len(c[0]["content"]) % 3 for i, c in enumerate(completions)]

    trainer = make_trainer(cache, non_finite_rewards="none")
    trainer.task = _task(hostile)
    trainer.weights = [1.0]
    m = trainer.step()
    assert m["rewards/non_finite"] == 1.0 and m["skipped_steps"] == 0.0
    assert all(torch.isfinite(p).all() for p in trainer.params)


# ------------------------------------------------------------------------------------------ 3. steps
def _guarded(max_skipped=3):
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return w, opt, sched, GuardedStep([w], opt, sched, max_grad_norm=1.0, max_skipped=max_skipped)


def test_a_step_with_a_non_finite_gradient_or_loss_is_skipped_and_three_in_a_row_stop_the_run():
    w, opt, sched, step = _guarded()
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    norm, applied = step()
    assert not applied and math.isnan(norm) and torch.equal(w.detach(), torch.ones(3)) and not opt.state
    w.grad = torch.tensor([1.0, 1.0, 1.0])
    assert step()[1] and not torch.equal(w.detach(), torch.ones(3))  # a good step resets the count
    before = w.detach().clone()
    for _ in range(2):
        w.grad = torch.ones(3)
        assert not step(loss_finite=False)[1]
    assert torch.equal(w.detach(), before) and sched.last_epoch == 1  # the schedule did not move either
    w.grad = torch.full((3,), float("inf"))
    with pytest.raises(NonFiniteStop, match="3 optimiser steps in a row"):
        step()


def test_a_model_with_a_nan_weight_is_never_saved(cache, tmp_path):
    trainer = make_trainer(cache)
    with torch.no_grad():
        trainer.params[0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        save_model(trainer.model, trainer.tok, tmp_path / "final")
    assert not (tmp_path / "final").exists()


def test_metrics_jsonl_is_strict_json(tmp_path):
    with MetricsWriter(tmp_path / "m.jsonl") as w:
        w.log(1, {"grad_norm": float("inf"), "loss": float("nan"), "x": torch.tensor([1.0, float("-inf")]),
                  "ok": 2.5})

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    row = json.loads((tmp_path / "m.jsonl").read_text(), parse_constant=refuse)
    assert row == {"step": 1, "grad_norm": None, "loss": None, "x": [1.0, None], "ok": 2.5}


# ------------------------------------------------------------------------------------------ 6(a) resample
def test_resampled_batch_is_normalised_by_the_std_of_the_batch_it_trains_on(cache):
    """Prompt 0's group is always flat (reward 0), so resampling replaces it; with scale_rewards=batch its
    replacement kept the std of the extra batch it came from."""
    def half_flat(prompts, completions, **_):
        return [0.0 if "Say something" in str(p) else float(len(c[0]["content"])) for p, c in zip(prompts, completions)]

    trainer = make_trainer(cache, prompts_per_step=6, dynamic_sampling="resample", scale_rewards="batch",
                           max_resample_rounds=2, max_completion_length=8)
    trainer.task = _task(half_flat)
    trainer.weights = [1.0]
    batch, _ = trainer._collect()
    assert not zero_std_groups(batch.rewards).any(), "the flat group was not replaced: nothing is tested"
    want = group_advantages(batch.rewards, scale_rewards="batch", eps=trainer.cfg.adv_eps).float()
    torch.testing.assert_close(batch.advantages, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ the script
def test_train_grpo_stops_on_an_inf_reward_with_one_line_and_saves_nothing(tmp_path, cache):
    (tmp_path / "hostile_reward.py").write_text(
        "def reward(prompts, completions, **_):\n    return [float('inf')] + [1.0] * (len(completions) - 1)\n")
    env = dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "out"), GRPO_CACHE_DIR=str(cache), OMP_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
    args = [sys.executable, str(ROOT / "scripts" / "train_grpo.py"), "--model", "tiny-llama", "--task", "arithmetic",
            "--max-steps", "2", "--num-generations", "2", "--max-completion-length", "6", "--reward-funcs", "hostile_reward:reward"]
    out = subprocess.run([*args, "--run-name", "a"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "'hostile_reward:reward' returned inf" in out.stderr
    assert not (tmp_path / "out" / "a" / "final").exists()
    ok = subprocess.run([*args, "--run-name", "b", "--non-finite-rewards", "none"], env=env, capture_output=True,
                        text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["rewards/non_finite"] for r in rows] == [1.0, 1.0]
    from safetensors.torch import load_file
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "out" / "b" / "final" /
                                                           "adapter_model.safetensors").values())
