"""The SEGA loop (sega.trainer) on tiny-llama: equal scores change nothing, the gradient is Eq. 2 written
longhand, the micro-batch split does not matter, filtering builds the valid mask, every metric is finite."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from grpo.models import load_model
from grpo.optim import make_optimizer, make_scheduler
from grpo.policy import completion_logprobs
from grpo.rollout import Rollout
from grpo_helpers import assert_same_update, trainable_state
from sega import trainer as sega_trainer
from sega.data import load_pairs
from sega.scoring import EntropyScore
from sega.settings import SegaSettings
from sega.trainer import SegaTrainer


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def make_trainer(cache, **overrides) -> SegaTrainer:
    settings = dict(model="tiny-llama", use_lora=False, k=4, batch_size=2, gen_max_new_tokens=10,
                    micro_batch_size=8, learning_rate=1e-2, seed=0)
    cfg = SegaSettings(**{**settings, **overrides})
    torch.manual_seed(cfg.seed)
    model, tok = load_model("tiny-llama", cache_dir=cache, use_lora=cfg.use_lora, lora_dropout=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, name="adamw", lr=cfg.learning_rate, weight_decay=0.0)
    sched = make_scheduler(opt, kind="constant", warmup_steps=0, total_steps=10)
    return SegaTrainer(cfg, model, tok, load_pairs("bundled", "train", limit=4), opt, sched)


def weights(trainer) -> dict[str, torch.Tensor]:
    return trainable_state(trainer)


def test_a_step_with_equal_scores_leaves_the_weights_unchanged(cache, monkeypatch):
    def constant_score(model, tok, prompt_ids, prompt_mask, completion_ids, completion_mask, **_):
        n = completion_ids.shape[0]
        zeros = torch.zeros(n)
        return EntropyScore(score=torch.full((n,), 0.7), h_final=zeros, fork_entropy=zeros,
                            final_mask=completion_mask, reasoning_mask=~completion_mask, fork_mask=~completion_mask)

    for mapping in ("identity", "softmax"):
        monkeypatch.setattr(sega_trainer, "score_completions", constant_score)
        trainer = make_trainer(cache, reward_mapping=mapping)
        before = weights(trainer)
        m = trainer.step()
        assert m["grad_norm"] == 0.0 and m["frac_zero_advantage_groups"] == 1.0 and m["advantage_abs_max"] == 0.0
        assert all(torch.equal(before[k], v) for k, v in weights(trainer).items())  # bit for bit
    monkeypatch.undo()  # control: with the real Eq. 1 scores the same step moves the weights
    trainer = make_trainer(cache)
    before = weights(trainer)
    assert trainer.step()["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in weights(trainer).items())


def test_update_gradient_is_eq2_written_longhand(cache):
    trainer = make_trainer(cache, micro_batch_size=4, max_grad_norm=0.0)  # one prompt per micro-batch, no clip
    batch, _ = trainer.collect()
    batch.valid[1, 2] = False  # an invalid candidate must drop out of k_valid and the sum
    batch.rewards[1, 2] = math.nan
    batch.advantages = sega_trainer.sega_advantages(batch.rewards)
    assert batch.advantages.abs().sum() > 0
    trainer.update(copy.deepcopy(batch))
    ours = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    fresh = make_trainer(cache)  # same initial weights
    r = batch.rollout
    logp, _ = completion_logprobs(fresh.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                  temperature=1.0)  # (N, T) the model distribution, as the trainer [D2]
    B, k = batch.advantages.shape
    loss = 0.0
    for b in range(B):  # L = (1/B) Σ_b −(1/k_valid) Σ_{i valid} A_i Σ_t m lp
        members = [i for i in range(k) if batch.valid[b, i]]
        for i in members:
            row = b * k + i
            loss = loss - batch.advantages[b, i] * logp[row][r.completion_mask[row]].sum() / len(members) / B
    loss.backward()
    for n, p in fresh.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours[n], p.grad, atol=1e-6, rtol=1e-4)


def test_update_does_not_depend_on_the_micro_batch_split(cache):
    batch, _ = make_trainer(cache).collect()
    after = {}
    for micro in (8, 4, 5):  # 2 prompts, 1 prompt, 5 → rounded down to 1 prompt of k = 4
        trainer = make_trainer(cache, micro_batch_size=micro)
        trainer.update(copy.deepcopy(batch))
        after[micro] = trainable_state(trainer, grads=True)
    for micro in (4, 5):
        assert_same_update(after[micro], after[8])


def test_filtering_builds_the_valid_mask_and_rewards():
    texts = ["a", "b", "", "d", "e", "f", "g", "h"]  # candidate 2 of prompt 0 is empty: never valid [D1]
    rollout = Rollout(*(None,) * 7, completions=texts)
    scores = torch.tensor([0.4, -0.2, 0.9, 0.1, 1.0, 1.1, 1.2, -5.0])  # prompt 1: one low outlier

    def run(**overrides):
        cfg = SegaSettings(**{"k": 4, **overrides})
        score = EntropyScore(scores, scores, scores, *(torch.zeros(8, 1, dtype=torch.bool),) * 3)
        return SegaTrainer._advantages(SimpleNamespace(cfg=cfg), rollout, score)

    plain = run()
    assert plain.valid.tolist() == [[True, True, False, True], [True] * 4]
    assert plain.rewards[0, 2].isnan() and plain.advantages[0, 2] == 0
    torch.testing.assert_close(plain.advantages[0], torch.tensor([0.3, -0.3, 0.0, 0.0]))  # mean of the valid: 0.1
    assert run(drop_low_outliers=True).valid.tolist() == [[True, True, False, True], [True, True, True, False]]
    pairs = run(pairs=True)
    assert pairs.valid.tolist() == [[True, True, False, False], [False, False, True, True]]
    torch.testing.assert_close(pairs.advantages[1], torch.tensor([0.0, 0.0, 3.1, -3.1]))  # ±(1.2 − (−5))/2
    soft = run(reward_mapping="softmax", tau=2.0)
    torch.testing.assert_close(soft.rewards[1].sum(), torch.tensor(1.0))
    assert soft.advantages.sum(1).abs().max() < 1e-6


def test_step_logs_every_metric_finite_with_every_option_on(cache):
    trainer = make_trainer(cache, use_lora=True, kl_coef=0.1, num_iterations=2, drop_low_outliers=True,
                           adv_norm="zscore", length_normalize=True, reward_mapping="softmax")
    m = trainer.step()
    for key in ("score", "score_std", "score_group_range", "h_final", "fork_entropy", "reward", "reward_std",
                "advantage_mean", "advantage_std", "advantage_abs_max", "frac_zero_advantage_groups", "valid_frac",
                "loss", "pg_loss", "kl", "ratio_mean", "clip_fraction", "completion_length",
                "completion_length_max", "truncated_frac", "grad_norm", "lr", "epoch", "num_tokens",
                "time/generate", "time/score", "time/update", "tokens_per_second"):
        assert key in m and math.isfinite(m[key]), (key, m.get(key))
    assert m["kl"] >= 0 and 0 <= m["clip_fraction"] <= 1 and 0 < m["valid_frac"] <= 1
    assert 0 <= m["h_final"] <= math.log(len(trainer.tok)) + 1e-4


def test_score_rises_when_sega_trains_on_it(cache):
    # λ = 0: S = −H_final, a score a random 2-layer model can raise in a few steps by growing confident at
    # the end of its candidates. (Maximising −S instead moves H_final by ~0.1 over the same steps.)
    trainer = make_trainer(cache, k=8, micro_batch_size=16, gen_max_new_tokens=12, lambda_fork=0.0)
    scores = [trainer.step()["score"] for _ in range(12)]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.4, f"score did not rise: first {first:.3f}, last {last:.3f}"
