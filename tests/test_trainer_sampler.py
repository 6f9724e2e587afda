"""The trainer with another sampler than its own (grpo.trainer [D12]), through a stand-in for the vLLM engine.

The stand-in samples with our HF path and reports the trainer's own float64 log-probs shifted by a known
number of nats as "the sampler's", so every effect of the correction is known exactly: the IS weight is
exp(−shift) per token, the logged difference is the shift, and the gradient scales by the weight. vLLM
itself is tested in tests/test_vllm_engine.py (marker `vllm`). Our own loop in bf16 (sampler_dtype, grpo.decode
[G9]) is another sampler too: the last test trains with it for real.
"""
import math

import pytest
import torch
from grpo_helpers import make_trainer, trainable_state

from grpo.policy import completion_logprobs
from grpo.rollout import sample_group

SHIFT = 0.3  # nats: lp_sampler = lp_trainer + SHIFT on every completion token
# HF's Llama RMSNorm computes in fp32 even in a float64 model, so two forward passes of the same rows (the
# stand-in's, the trainer's) agree to ~1e-7, not 1e-15: gradients are compared to 1e-6 of their largest entry.
GRAD_TOL = 1e-6


def assert_grads_close(got, want, *, scale_by=1.0):
    grads = [k for k in want if k.endswith(".grad")]
    top = max(float(want[k].abs().max()) for k in grads)
    assert top > 0
    for k in grads:
        torch.testing.assert_close(got[k], scale_by * want[k], atol=GRAD_TOL * top, rtol=0, msg=k)


class StandInEngine:
    """`sync` remembers the model; `sample` returns an HF rollout marked as vLLM's, log-probs shifted."""

    def __init__(self, shift: float = SHIFT):
        self.shift, self.syncs, self.model, self.rollouts = shift, 0, None, []

    def sync(self, model) -> float:
        self.syncs += 1
        self.model = model
        return 0.001

    def sample(self, tok, prompt_ids, prompt_mask, *, G, sampling, seed, eos_ids):
        r = sample_group(self.model, tok, prompt_ids, prompt_mask, G=G, sampling=sampling, generator_seed=seed)
        with torch.no_grad():
            lp, self.entropy = completion_logprobs(self.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                                   r.completion_mask, temperature=sampling.temperature)
        r.logp = (lp + self.shift) * r.completion_mask
        r.entropy, r.sampler = torch.zeros_like(r.entropy), "vllm"
        self.rollouts.append(r)
        return r


def trainer_with(tmp_path, engine, **settings):
    t = make_trainer(tmp_path, dtype="float64", use_vllm=False, loss_type="dapo", **settings)
    t.engine = engine
    return t


def test_weights_reach_the_sampler_before_every_sampling_that_follows_a_step(tmp_path):
    engine = StandInEngine()
    t = trainer_with(tmp_path, engine, dynamic_sampling="resample", max_resample_rounds=2)
    for step in (1, 2, 3):
        m = t.step()
        assert engine.syncs == step  # once per step (resampling within a step needs none), the first included
        assert m["time/sync_weights"] == pytest.approx(0.001)
        assert engine.model is t.model


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_the_is_weight_scales_each_tokens_gradient_and_is_logged(tmp_path, mode):
    """dapo at μ = 1 (ρ ≡ 1, nothing clipped): the per-token loss is linear, so a weight exp(−shift) on every
    token scales the gradient by it exactly (token modes); sequence modes weigh sequence i by exp(−shift·|o_i|)."""
    kw = dict(vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_max=None,
              vllm_importance_sampling_clip_min=None if mode.endswith("mask") else 1e-30)
    corrected = trainer_with(tmp_path, StandInEngine(), **kw)  # each built (seeded) right before its step
    m = corrected.step()
    plain = trainer_with(tmp_path, StandInEngine(), vllm_importance_sampling_correction=False, **kw)
    m_plain = plain.step()
    assert m["reward"] == m_plain["reward"]  # the same samples
    r = corrected.engine.rollouts[0]
    lengths = r.completion_mask.sum(-1)
    got, want = trainable_state(corrected, grads=True), trainable_state(plain, grads=True)
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx(SHIFT, abs=1e-6)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(SHIFT, abs=1e-6)
    assert m_plain["sampling/sampling_logp_difference/mean"] == pytest.approx(SHIFT, abs=1e-6)  # logged either way
    if mode.startswith("token"):
        assert_grads_close(got, want, scale_by=math.exp(-SHIFT))
        assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(math.exp(-SHIFT), abs=1e-6)
    else:
        w = torch.exp(-SHIFT * lengths[lengths > 0].double())
        assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(float(w.min()), rel=1e-5)
        assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(float(w.max()), rel=1e-5)
        if len(set(lengths.tolist())) == 1:  # one length: one weight exp(−shift·L) for every sequence
            assert_grads_close(got, want, scale_by=float(w[0]))
        else:  # unequal weights: not one scale of the plain gradient
            ratios = [float((got[k] / want[k])[want[k].abs() > 1e-8].std()) for k in want if k.endswith(".grad")]
            assert max(ratios) > 1e-6


def test_entropies_come_from_the_trainer_forward(tmp_path):
    t = trainer_with(tmp_path, StandInEngine())
    m = t.step()
    r, h = t.engine.rollouts[0], t.engine.entropy  # the policy's entropies before the update
    assert torch.allclose(r.entropy.double(), (h * r.completion_mask).double(), atol=1e-6)  # filled in place of the zeros
    want = float((h * r.completion_mask).sum() / r.completion_mask.sum())
    assert m["sampling_entropy"] == pytest.approx(want, rel=1e-6) and want > 0


def test_at_mu_1_the_gradient_pass_gives_what_a_separate_old_logp_forward_gives(tmp_path):
    """[D12]: lp_old = sg[lp_θ] of the gradient pass; forking tokens with ρ → 1 (every token kept) take the
    separate no-grad forward instead: the same update in float64."""
    one_pass = trainer_with(tmp_path, StandInEngine(), vllm_importance_sampling_mode="token_truncate")
    m1 = one_pass.step()
    two_pass = trainer_with(tmp_path, StandInEngine(), vllm_importance_sampling_mode="token_truncate",
                            top_entropy_quantile=1 - 1e-9)  # ceil(ρ·N) = N: all tokens, via the no-grad pass
    m2 = two_pass.step()
    got, want = trainable_state(one_pass, grads=True), trainable_state(two_pass, grads=True)
    assert_grads_close(got, want)
    for k in ("sampling/sampling_logp_difference/mean", "sampling/importance_sampling_ratio/mean", "sampling_entropy"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-6)


# ------------------------------------------------------------------------------------- our loop in bf16
def bf16_trainer(tmp_path, **settings):
    """tiny-llama in fp32 sampled by our loop with bf16 linear layers (grpo.decode_linears [G9]); its rollouts kept,
    each with a copy of the entropies it recorded."""
    t = make_trainer(tmp_path, loss_type="dapo", **settings)
    sample, t.rollouts = t._sample, []

    def recording(n_prompts):
        rows, r = sample(n_prompts)
        t.rollouts.append((r, r.entropy.clone()))
        return rows, r

    t._sample = recording
    return t


def test_a_bf16_sampler_gets_the_is_correction_and_its_metrics_and_fp32_sampling_gets_none(tmp_path):
    kw = dict(vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=None,
              vllm_importance_sampling_clip_min=1e-30)  # every weight exp(lp_old − lp_bf16) as it is
    corrected = bf16_trainer(tmp_path, sampler_dtype="bfloat16", **kw)
    m = corrected.step()
    plain = bf16_trainer(tmp_path, sampler_dtype="bfloat16", vllm_importance_sampling_correction=False, **kw)
    m_plain = plain.step()
    (r, recorded), _ = corrected.rollouts[0], plain.rollouts[0]
    assert r.sampler == "hf-bf16" and m["reward"] == m_plain["reward"]  # the same samples
    gap, ratio = m["sampling/sampling_logp_difference/mean"], m["sampling/importance_sampling_ratio/mean"]
    assert 0 < gap < 1e-2 and ratio != 1.0 and abs(ratio - 1) < 1e-2, (gap, ratio)
    assert m["sampling/importance_sampling_ratio/min"] < 1 < m["sampling/importance_sampling_ratio/max"]
    got, want = trainable_state(corrected, grads=True), trainable_state(plain, grads=True)
    grads = [k for k in want if k.endswith(".grad")]
    top = max(float(want[k].abs().max()) for k in grads)
    diff = max(float((got[k] - want[k]).abs().max()) for k in grads)
    assert 0 < diff < 0.05 * top, (diff, top)  # the weights reached the gradient, each within ~1% of 1
    # the bf16 loop's own entropies are kept (vLLM's zeros are replaced, grpo.trainer [D12])
    assert torch.equal(r.entropy, recorded)
    want_h = float((recorded * r.completion_mask).sum() / r.completion_mask.sum())
    assert m["sampling_entropy"] == pytest.approx(want_h, rel=1e-6)

    fp32 = bf16_trainer(tmp_path)  # the default: our loop in fp32, the trainer's own policy
    m32 = fp32.step()
    assert fp32.rollouts[0][0].sampler == "hf" and not any(k.startswith("sampling/") for k in m32)
