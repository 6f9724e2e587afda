"""The GRPO loop on tiny-llama: learning, split invariance, μ = 1 gradient, metrics, dynamic sampling."""
import copy
import json

import pytest
import torch

from grpo.trainer import PromptSampler
from grpo_helpers import assert_same_update, finite, make_trainer, trainable_state


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def test_reward_rises_on_a_learnable_toy_task(cache):
    # Full fine-tuning: a random model's near-uniform head gives LoRA on attention/MLP little leverage.
    trainer = make_trainer(cache, seed=1, num_generations=8, prompts_per_step=4, max_completion_length=16,
                           learning_rate=1e-2, use_lora=False, micro_batch_size=32)
    rewards = [trainer.step()["reward"] for _ in range(25)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, f"reward did not rise: first {first:.3f}, last {last:.3f}"


def test_step_logs_every_metric_finite(cache):
    trainer = make_trainer(cache, beta=0.04, num_iterations=2, top_entropy_quantile=0.5)
    m = trainer.step()
    for key in ("reward", "reward_std", "frac_reward_zero_std", "advantage_mean", "advantage_std", "loss", "kl",
                "entropy", "sampling_entropy", "ratio_mean", "clip_low", "clip_high", "clip_region",
                "completion_length", "completion_length_min", "completion_length_max", "truncated_frac",
                "grad_norm", "lr", "time/generate", "time/score", "time/update", "tokens_per_second",
                "rewards/vowel_fraction/mean", "rewards/vowel_fraction/std"):
        assert key in m and finite(m[key]), key
    assert m["kl"] >= 0 and 0 <= m["clip_region"] <= 1


def test_step_logs_the_metrics_of_cispo_vespo_and_the_off_policy_mask(cache, tmp_path):
    """cispo_clip_ratio, vespo/phi_seq_mean and off_policy_masked_frac reach metrics.jsonl; at μ = 2 the second
    pass is off-policy, so the ratios move, and the mask (δ = 0, lp_s = lp_old [trainer D11]) may drop sequences."""
    from grpo.run import MetricsWriter

    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for step, settings in enumerate([dict(loss_type="cispo", epsilon_high=1.0), dict(loss_type="vespo")]):
        trainer = make_trainer(cache, num_iterations=2, off_policy_mask_threshold=0.0, learning_rate=3e-2, **settings)
        writer.log(step, trainer.step())
    writer.close()
    cispo, vespo = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= cispo["cispo_clip_ratio"] <= 1 and "clip_region" not in cispo and "vespo/phi_seq_mean" not in cispo
    assert 0 < vespo["vespo/phi_seq_mean"] <= 1.3 and "cispo_clip_ratio" not in vespo  # φ ≤ 1.24 at the defaults
    for m in (cispo, vespo):
        assert 0 <= m["off_policy_masked_frac"] <= 1 and m["ratio_mean"] != 1 and finite(m["loss"])


def _one_update(cache, batch, **overrides):
    trainer = make_trainer(cache, **overrides)
    trainer._update(copy.deepcopy(batch))
    return trainable_state(trainer, grads=True)


SPLIT_CASES = {  # every loss_type whose normaliser counts the whole batch (bnpo is local by definition)
    "grpo": {}, "dapo": {}, "dr_grpo": {}, "luspo": dict(importance_sampling_level="sequence"),
    "cispo": dict(epsilon_high=5.0), "sapo": {}, "vespo": {},
    "dapo+mask+ratio_kl": dict(loss_type="dapo", beta=0.04, use_bias_correction_kl=True, off_policy_mask_threshold=0.0)}


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_update_does_not_depend_on_the_micro_batch_split(cache, case):
    settings = {"loss_type": case, **SPLIT_CASES[case]}
    trainer = make_trainer(cache)
    batch, _ = trainer._collect()
    assert batch.advantages.abs().sum() > 0  # the test needs a non-zero gradient
    whole = _one_update(cache, batch, micro_batch_size=8, **settings)
    split = _one_update(cache, batch, micro_batch_size=3, **settings)
    start = trainable_state(make_trainer(cache))
    assert any(not torch.equal(whole[k], start[k]) for k in start)  # the step moved the weights
    assert_same_update(split, whole)


def test_gradient_at_mu_1_is_the_plain_policy_gradient(cache):
    trainer = make_trainer(cache, loss_type="dapo")
    batch, _ = trainer._collect()
    r = batch.rollout
    trainer._update(copy.deepcopy(batch))  # fills .grad (then steps); recompute the gradient below
    ours = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    fresh = make_trainer(cache, loss_type="dapo")
    from grpo.policy import completion_logprobs

    logp, _ = completion_logprobs(fresh.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                  temperature=fresh.cfg.temperature)  # log-probs at the sampling T
    A = batch.advantages.reshape(-1, 1)  # [N, 1]
    pg = -(A * logp * r.completion_mask).sum() / r.completion_mask.sum()  # −(1/Σm) Σ A·lp
    pg.backward()
    for n, p in fresh.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours[n], p.grad, atol=1e-6, rtol=1e-4)


def test_drop_dynamic_sampling_removes_zero_variance_groups(cache):
    trainer = make_trainer(cache, dynamic_sampling="drop")
    batch, _ = trainer._collect()
    batch.rewards[0] = 1.0  # make group 0 uninformative
    batch.advantages[0] = 0.0
    out = trainer._update(batch)
    assert out["num_sequences_trained"] == 4  # 2 groups × G=4, one dropped


def test_prompt_sampler_state_round_trip_continues_the_same_order():
    a = PromptSampler(7, seed=3)
    first = a.next(5)
    b = PromptSampler(7, seed=3)
    b.load_state(a.state())
    assert a.next(9) == b.next(9) and sorted(first + PromptSampler(7, 3).next(7)[5:]) == list(range(7))
