"""grpo.loss.policy_loss against TRL's own loss code (trl.GRPOTrainer._compute_loss), on identical inputs.

How TRL's code is reached without re-implementing it: a real `trl.GRPOTrainer` is built on the tiny Llama;
its forward-pass hook `_get_per_token_logps_and_entropies` is replaced by one that returns our leaf tensors
(log-probs, entropies), and `compute_loss` is called with the inputs dict its `_generate_and_score_completions`
would have produced (old/ref log-probs, advantages, masks, `num_items_in_batch`). Everything after that hook
— ratio, clip, δ, KL, entropy mask, entropy bonus, aggregation, gradient-accumulation scaling — is TRL's
code. Gradients are taken w.r.t. the same leaves, so value and gradient are compared on one graph each.

The deliberate differences (docs/trl_differences.md) are tested as differences, not hidden: forking tokens
are selected per optimiser step by us and per micro-batch by TRL, and TRL's `torch.quantile` threshold can
keep one token fewer than our exact ⌈ρ·N⌉.
Inputs are float64 so the comparison measures the formulas, not rounding (TOL[float64] ≤ the 1e-6 asked).
Every loss_type TRL 1.16 has (grpo, dapo, dr_grpo, bnpo, luspo, cispo, sapo, vespo, ALGORITHMS.md §2b), the
off-policy sequence mask and the ratio-weighted KL are compared, each with its TRL settings translated to
ours key for key (`our_options`). Skipped when TRL (the optional `bench` extra) is not installed.

The sampler correction (ALGORITHMS.md §5, TRL's `vllm_importance_sampling_*`): TRL's compute_loss reads
`inputs["importance_sampling_ratio"]` only when `trainer.use_vllm` is True, and GRPOTrainer(use_vllm=True)
starts a vLLM engine (not installed here), so the trainer is built without it and `use_vllm` is set on the
instance for the call, then restored. TRL computes the ratio and its metrics inline in
`_generate_and_score_completions`; those lines are cut from TRL's source and run on our tensors
(`trl_sampler_lines`), so our `sampler_weights` and `mismatch_stats` are compared with TRL's own code.
"""
import collections
import inspect
import math
import textwrap
import types

import pytest
import torch
from conftest import TOL

trl = pytest.importorskip("trl", reason="TRL is not installed (optional extra: pip install -e .[bench])")
datasets = pytest.importorskip("datasets", reason="TRL needs the datasets package")

from grpo.correction import IS_MODES, mismatch_stats, sampler_weights  # noqa: E402
from grpo.loss import policy_loss  # noqa: E402
from grpo.models import named_model_path  # noqa: E402
from kernels import top_k_entropy_mask  # noqa: E402

N, T, G, L = 8, 7, 4, 7  # sequences, completion columns, group size, max_completion_length
EPS_LOW, EPS_HIGH, BETA = 0.2, 0.28, 0.04
DTYPE = torch.float64


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(named_model_path("tiny-llama", cache_dir=tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def make_trl(tiny_path, tmp_path_factory):
    """A real trl.GRPOTrainer for a GRPOConfig; cached per config (construction validates the options)."""
    built = {}

    def make(micro_batches: int, **config):
        key = (micro_batches, tuple(sorted(config.items())))
        if key not in built:
            args = trl.GRPOConfig(
                output_dir=str(tmp_path_factory.mktemp("trl")), use_cpu=True, bf16=False, report_to=[],
                save_strategy="no", activation_checkpointing=False, num_generations=G, max_completion_length=L,
                per_device_train_batch_size=N // micro_batches, gradient_accumulation_steps=micro_batches,
                epsilon=EPS_LOW, **config)
            rows = [{"prompt": [{"role": "user", "content": "hi"}]}] * N
            trainer = trl.GRPOTrainer(model=tiny_path, reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts),
                                      args=args, train_dataset=datasets.Dataset.from_list(rows))
            trainer.model.train()  # TRL picks its train-mode normalisers from model.training
            trainer.current_gradient_accumulation_steps = micro_batches  # set by Trainer's loop in training
            assert trainer.args.steps_per_generation == micro_batches  # one generation batch per optimiser step
            built[key] = trainer
        return built[key]

    return make


def make_batch(seed=0):
    """(N, T) float64 inputs; finite garbage on padding (TRL multiplies by the mask, so it needs finite values)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 0, 3, 5, 1, T, 6, 2])  # a full row, a fully masked (truncated) row, ragged rest
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (N, T) bool
    logp = -torch.rand(N, T, generator=g, dtype=DTYPE) * 3
    return dict(
        mask=mask, logp=logp,
        old=logp + torch.randn(N, T, generator=g, dtype=DTYPE) * 0.4,  # ratios spread over the clip range
        ref=logp + torch.randn(N, T, generator=g, dtype=DTYPE) * 0.5,
        entropy=torch.randperm(N * T, generator=g).to(DTYPE).view(N, T) / 8,  # distinct, exact in fp32 (TRL's quantile)
        adv=torch.randn(N, generator=g, dtype=DTYPE))


def trl_losses(trainer, b, *, micro_batches, with_old=True, with_ref=False, with_sampling=False,
               importance_sampling_ratio=None):
    """TRL's loss of each micro-batch, and d(Σ losses)/d(logp, entropy).

    importance_sampling_ratio: (N, T) or (N, 1) sampler weights, passed as TRL's vLLM path would (use_vllm is
    switched on for the call only: the trainer is cached and shared)."""
    if importance_sampling_ratio is not None:
        assert trainer.vllm_importance_sampling_correction  # GRPOConfig's default
        trainer.use_vllm = True
        try:
            return trl_losses(trainer, {**b, "is_ratio": importance_sampling_ratio}, micro_batches=micro_batches,
                              with_old=with_old, with_ref=with_ref, with_sampling=with_sampling)
        finally:
            trainer.use_vllm = False
    trainer._metrics["train"].clear()
    logp = b["logp"].clone().requires_grad_()
    entropy = b["entropy"].clone().requires_grad_()
    size = N // micro_batches
    losses = []
    for start in range(0, N, size):
        sl = slice(start, start + size)
        trainer._get_per_token_logps_and_entropies = (  # the model forward, replaced by our tensors
            lambda *_, sl=sl, **__: (logp[sl], entropy[sl], None))
        inputs = {
            "prompt_ids": torch.ones(size, 2, dtype=torch.long), "prompt_mask": torch.ones(size, 2, dtype=torch.long),
            "completion_ids": torch.ones(size, T, dtype=torch.long), "completion_mask": b["mask"][sl].long(),
            "advantages": b["adv"][sl], "num_items_in_batch": b["mask"].sum()}  # TRL: Σ m of the generation batch
        if with_old:  # without it TRL uses logp.detach() (μ = 1)
            inputs["old_per_token_logps"] = b["old"][sl]
        if with_ref:
            inputs["ref_per_token_logps"] = b["ref"][sl]
        if with_sampling:  # the sampler's log-probs (TRL: vLLM's), read by the off-policy mask
            inputs["sampling_per_token_logps"] = b["sampling"][sl]
        if "is_ratio" in b:  # TRL: output["importance_sampling_ratio"] of _generate_and_score_completions
            inputs["importance_sampling_ratio"] = b["is_ratio"][sl]
        losses.append(trainer.compute_loss(trainer.model, inputs))
    torch.stack(losses).sum().backward()
    return torch.stack(losses).detach(), logp.grad, entropy.grad


def our_losses(b, *, micro_batches, loss_type, level="token", delta=None, with_old=True, beta=0.0,
               entropy_coef=0.0, token_mask=None, eps_high=EPS_HIGH, with_sampling=False, stats=None,
               sampler_weight=None, **options):
    """Our policy_loss on the same micro-batches (the trainer's call, grpo/trainer.py _update).

    options: the surrogate settings and the off-policy mask / KL options (`our_options`); `stats`, a list, receives
    each micro-batch's PolicyLossStats."""
    logp = b["logp"].clone().requires_grad_()
    entropy = b["entropy"].clone().requires_grad_()
    size = N // micro_batches
    num_selected = None if token_mask is None else (token_mask & b["mask"]).sum()
    losses = []
    for start in range(0, N, size):
        sl = slice(start, start + size)
        loss, st = policy_loss(
            logp[sl], b["old"][sl] if with_old else logp[sl].detach(), b["adv"][sl], b["mask"][sl],
            loss_type=loss_type, eps_low=EPS_LOW, eps_high=eps_high, delta=delta, importance_sampling_level=level,
            ref_logp=b["ref"][sl] if beta else None, beta=beta, entropy=entropy[sl], entropy_coef=entropy_coef,
            token_mask=None if token_mask is None else token_mask[sl], num_sequences=N,
            num_tokens=b["mask"].sum(), num_selected_tokens=num_selected, max_completion_length=L,
            sampling_logp=b["sampling"][sl] if with_sampling else None,
            sampler_weight=None if sampler_weight is None else sampler_weight[sl], **options)
        losses.append(loss)
        if stats is not None:
            stats.append(st)
    torch.stack(losses).sum().backward()
    return torch.stack(losses).detach(), logp.grad, entropy.grad


# Every TRL 1.16 loss_type with the levels both accept [loss D12], and TRL settings that make each one's own
# parameters matter: CISPO's cap ε_max = 1.5 is hit, SAPO's and VESPO's constants are not the defaults (and
# exact in float32, see test_trl_rounds_sapo_temperatures_to_float32).
CLIPPED = ["grpo", "dapo", "dr_grpo", "bnpo"]
CASES = [(lt, lvl) for lt in CLIPPED for lvl in ("token", "sequence")] + [
    ("luspo", "sequence"), ("cispo", "token"), ("sapo", "token"), ("sapo", "sequence"), ("vespo", "token")]
SURROGATE_SETTINGS = {
    "cispo": dict(epsilon_high=1.5),
    "sapo": dict(sapo_temperature_pos=0.75, sapo_temperature_neg=1.25),
    # a small k_pos lets VESPO's lower clip of log w show in φ (at k = 2, φ ≈ e^−37 there either way)
    "vespo": dict(vespo_k_pos=0.5, vespo_lambda_pos=2.5, vespo_k_neg=2.5, vespo_lambda_neg=1.5)}


def trl_settings(loss_type, level, **extra):
    """The GRPOConfig keys of one case."""
    return dict(loss_type=loss_type, importance_sampling_level=level,
                **SURROGATE_SETTINGS.get(loss_type, dict(epsilon_high=EPS_HIGH)), **extra)


def our_options(config):
    """TRL's GRPOConfig keys → our policy_loss keywords (grpo/settings.py keeps TRL's names and defaults)."""
    get = config.get
    return dict(loss_type=config["loss_type"], level=get("importance_sampling_level", "token"),
                eps_high=get("epsilon_high", EPS_LOW), delta=get("delta"),  # TRL: epsilon_high None = epsilon
                sapo_temperature=(get("sapo_temperature_pos", 1.0), get("sapo_temperature_neg", 1.05)),
                vespo_k=(get("vespo_k_pos", 2.0), get("vespo_k_neg", 3.0)),
                vespo_lambda=(get("vespo_lambda_pos", 3.0), get("vespo_lambda_neg", 2.0)),
                off_policy_mask_threshold=get("off_policy_mask_threshold"),
                use_bias_correction_kl=get("use_bias_correction_kl", True), beta=get("beta", 0.0),
                entropy_coef=get("entropy_coef", 0.0))


def far_batch(seed):
    """Ratios far from 1: token log-ratios N(0, 1.5²), and three rows (A > 0) that reach TRL's VESPO clips:
    row 0 at +30 nats per token (Σ clipped to 20), row 3 at −30 (Σ clipped to log 1e-8), row 6 with one token at
    +30 and the rest at −4 (its token clipped to 20, so Σ = 0). A > 0 keeps the clipped losses finite-sized."""
    b = make_batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    b["old"] = b["logp"] + torch.randn(N, T, generator=g, dtype=DTYPE) * 1.5
    b["old"][0] = b["logp"][0] - 30.0  # ρ = e^30 on every token of the full row
    b["old"][3] = b["logp"][3] + 30.0  # ρ = e^−30
    b["old"][6] = b["logp"][6] + 4.0
    b["old"][6, 0] = b["logp"][6, 0] - 30.0
    b["adv"][[0, 3, 6]] = b["adv"][[0, 3, 6]].abs()
    assert (b["adv"] < 0).any()
    return b


def assert_same(ours, theirs):
    for a, b_, what in zip(ours, theirs, ("loss per micro-batch", "d/d logp", "d/d entropy")):
        if a is None or b_ is None:
            assert a is None or not a.any(), f"{what}: TRL has no gradient here but ours is non-zero"
            assert b_ is None or not b_.any(), f"{what}: ours has no gradient here but TRL's is non-zero"
            continue
        torch.testing.assert_close(a, b_, **TOL[DTYPE], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("loss_type,level", CASES)
def test_loss_and_gradient_equal_trl_with_kl_and_clip_higher_over_two_micro_batches(make_trl, loss_type, level):
    b = make_batch()
    config = trl_settings(loss_type, level, beta=BETA, use_bias_correction_kl=False)  # TRL's default: below
    theirs = trl_losses(make_trl(2, **config), b, micro_batches=2, with_ref=True)
    ours = our_losses(b, micro_batches=2, **our_options(config))
    assert_same(ours, theirs)
    assert theirs[1].abs().sum() > 0


@pytest.mark.parametrize("loss_type,level", CASES)
def test_loss_and_gradient_equal_trl_with_ratios_far_from_one(make_trl, loss_type, level):
    """Token log-ratios N(0, 1.5²) and rows at ±30 nats: CISPO's cap, SAPO's saturated gate, VESPO's clips."""
    b = far_batch(seed=6)
    config = trl_settings(loss_type, level)
    stats = []
    theirs = trl_losses(make_trl(2, **config), b, micro_batches=2)
    ours = our_losses(b, micro_batches=2, stats=stats, **our_options(config))
    assert_same(ours, theirs)
    assert all(x is None or torch.isfinite(x).all() for x in ours)
    metrics = make_trl(2, **config)._metrics["train"]  # TRL's logged stats of the two micro-batches
    if loss_type == "cispo":  # the same token mean per micro-batch
        torch.testing.assert_close(torch.tensor([float(st.cispo_clip_ratio) for st in stats], dtype=DTYPE),
                                   torch.tensor(metrics["cispo_clip_ratio"], dtype=DTYPE), **TOL[DTYPE])
        assert 0 < sum(metrics["cispo_clip_ratio"])  # the cap is hit
    if loss_type == "vespo":  # TRL's mean also counts a row without tokens, whose φ is 1; ours skips it
        for st, trl_mean, rows in zip(stats, metrics["vespo/phi_seq_mean"], (b["mask"][:4], b["mask"][4:])):
            empty = int((~rows.any(-1)).sum())
            torch.testing.assert_close(float(st.vespo_phi_seq_mean) * int(st.num_sequences) + empty,
                                       trl_mean * rows.shape[0], **TOL[DTYPE])


@pytest.mark.parametrize("loss_type,level", [c for c in CASES if c[0] in CLIPPED + ["luspo"]])
def test_loss_and_gradient_equal_trl_with_two_sided_clipping(make_trl, loss_type, level):
    b = make_batch(seed=1)
    b["old"] = b["logp"] - 1.0 * (b["adv"][:, None] < 0)  # ρ = e ≈ 2.72 > δ wherever A < 0: δ is active
    trainer = make_trl(2, loss_type=loss_type, importance_sampling_level=level, epsilon_high=EPS_HIGH, delta=1.5)
    assert_same(our_losses(b, micro_batches=2, loss_type=loss_type, level=level, delta=1.5),
                trl_losses(trainer, b, micro_batches=2))


@pytest.mark.parametrize("loss_type,level", CASES)
def test_loss_and_gradient_equal_trl_on_policy_without_old_logprobs(make_trl, loss_type, level):
    """μ = 1: TRL uses logp.detach() as old log-probs (ρ ≡ 1), as our trainer does [trainer D1]."""
    b = make_batch(seed=2)
    config = trl_settings(loss_type, level)
    assert_same(our_losses(b, micro_batches=2, with_old=False, **our_options(config)),
                trl_losses(make_trl(2, **config), b, micro_batches=2, with_old=False))


@pytest.mark.parametrize("loss_type,level", CASES)
def test_loss_and_gradient_equal_trl_with_forking_tokens_kl_and_entropy_bonus_in_one_micro_batch(make_trl,
                                                                                                  loss_type, level):
    """top_entropy_quantile ρ = 0.2 on 31 tokens: TRL keeps 1 + ⌊ρ·30⌋ = 7, we keep ⌈ρ·31⌉ = 7: the same set."""
    b = make_batch(seed=3)
    rho = 0.2
    config = trl_settings(loss_type, level, beta=BETA, entropy_coef=0.01, use_bias_correction_kl=False)
    trainer = make_trl(1, top_entropy_quantile=rho, **config)
    token_mask = top_k_entropy_mask(b["entropy"], b["mask"], rho=rho)
    ours = our_losses(b, micro_batches=1, token_mask=token_mask, **our_options(config))
    theirs = trl_losses(trainer, b, micro_batches=1, with_ref=True)
    assert_same(ours, theirs)
    assert int(token_mask.sum()) == math.ceil(rho * int(b["mask"].sum())) == 7


@pytest.mark.parametrize("loss_type,level", CASES)
@pytest.mark.parametrize("sampler", ["old_logprobs", "sampling_logprobs"])
def test_loss_and_gradient_equal_trl_with_the_off_policy_mask(make_trl, loss_type, level, sampler):
    """DeepSeek-V3.2's mask, δ = 0.05: some A < 0 sequences dropped, some kept; lp_s = lp_old, or the sampler's."""
    b = make_batch(seed=7)
    g = torch.Generator().manual_seed(8)
    b["sampling"] = b["old"] + torch.randn(N, T, generator=g, dtype=DTYPE) * 0.3
    b["sampling"][2, 0] = float("nan")  # a token the sampler could not score: it adds 0 to the mean
    with_sampling = sampler == "sampling_logprobs"
    config = trl_settings(loss_type, level, off_policy_mask_threshold=0.05)
    stats = []
    ours = our_losses(b, micro_batches=2, with_sampling=with_sampling, stats=stats, **our_options(config))
    assert_same(ours, trl_losses(make_trl(2, **config), b, micro_batches=2, with_sampling=with_sampling))
    lp_s = b["sampling"].nan_to_num() if with_sampling else b["old"]
    drift = (torch.where(b["mask"], lp_s - b["logp"], 0.0).sum(1) / b["mask"].sum(1).clamp(min=1))  # (N,)
    dropped = (b["adv"] < 0) & (drift > 0.05)
    assert dropped.any() and ((b["adv"] < 0) & ~dropped & b["mask"].any(1)).any()  # the mask is exercised
    got = sum(float(st.off_policy_masked) * int(st.num_sequences) for st in stats)
    assert math.isclose(got, int(dropped.sum()), abs_tol=1e-6)  # the masked-sequence fraction, counted in fp32


@pytest.mark.parametrize("loss_type,level", CASES)
def test_loss_and_gradient_equal_trl_with_the_ratio_weighted_kl(make_trl, loss_type, level):
    """use_bias_correction_kl=True (TRL's default, ours off [loss D13]) with ρ ≠ 1, β = 0.04."""
    b = make_batch(seed=9)
    config = trl_settings(loss_type, level, beta=BETA, use_bias_correction_kl=True)
    assert_same(our_losses(b, micro_batches=2, **our_options(config)),
                trl_losses(make_trl(2, **config), b, micro_batches=2, with_ref=True))


def test_trl_rounds_sapo_temperatures_to_float32(make_trl):
    """Documented difference: TRL builds τ with torch.where of two Python floats, so float32: its default τ_neg = 1.05
    is 1.0499999523 there. Ours keeps the advantages' dtype [surrogates D2]; with τ_neg rounded to float32 first
    the two agree to 1e-10, with 1.05 they differ by ~1e-8."""
    b = make_batch(seed=10)
    trainer = make_trl(2, loss_type="sapo")  # τ = (1.0, 1.05), TRL's defaults
    theirs = trl_losses(trainer, b, micro_batches=2)
    tau_neg_fp32 = float(torch.tensor(1.05, dtype=torch.float32))
    assert_same(our_losses(b, micro_batches=2, loss_type="sapo", sapo_temperature=(1.0, tau_neg_fp32)), theirs)
    exact = our_losses(b, micro_batches=2, loss_type="sapo", sapo_temperature=(1.0, 1.05))
    assert 0 < (exact[1] - theirs[1]).abs().max() < 1e-7


def test_trl_default_kl_is_weighted_by_the_ratio_so_its_gradient_differs_even_on_policy(make_trl):
    """Documented difference: TRL 1.16 defaults to use_bias_correction_kl=True (β·ρ·kl, DeepSeek-V3.2); we keep
    the k3 term of DeepSeekMath (ALGORITHMS.md §2). At μ = 1 the values agree (ρ ≡ 1), the gradients do not."""
    b = make_batch(seed=5)
    trainer = make_trl(2, loss_type="dapo", beta=BETA)
    assert trainer.args.use_bias_correction_kl
    ours = our_losses(b, micro_batches=2, loss_type="dapo", beta=BETA, with_old=False)
    theirs = trl_losses(trainer, b, micro_batches=2, with_old=False, with_ref=True)
    torch.testing.assert_close(ours[0], theirs[0], **TOL[DTYPE])
    kl = torch.expm1(b["ref"] - b["logp"]) - (b["ref"] - b["logp"])  # (N, T) k3, the extra ∂(ρ·kl)/∂lp = kl at ρ = 1
    extra = BETA * torch.where(b["mask"], kl, 0.0) / b["mask"].sum()  # dapo normaliser
    torch.testing.assert_close(theirs[1] - ours[1], extra, **TOL[DTYPE])


def test_trl_selects_forking_tokens_per_micro_batch_we_per_optimiser_step(make_trl):
    """Documented difference: with 2 micro-batches TRL ranks each half separately, so the kept sets differ."""
    b = make_batch(seed=3)
    b["entropy"][:N // 2] += 100.0  # every high-entropy token lives in the first micro-batch
    trainer = make_trl(2, loss_type="dapo", top_entropy_quantile=0.2)
    trl_mask = torch.cat([trainer.get_high_entropy_mask(b["entropy"][sl], b["mask"][sl].long(), 1 - 0.2)
                          for sl in (slice(0, N // 2), slice(N // 2, N))])
    ours = top_k_entropy_mask(b["entropy"], b["mask"], rho=0.2)
    assert not (ours & b["mask"])[N // 2:].any()  # ours: the batch's top 20%, all in the first half
    assert (trl_mask & b["mask"].bool())[N // 2:].any()  # TRL: 20% of each half


def test_trl_quantile_threshold_can_keep_one_token_fewer_than_exact_top_k(make_trl):
    """Documented difference: n = 7 tokens, ρ = 0.3 → TRL keeps 1 + ⌊ρ(n−1)⌋ = 2, we keep ⌈ρ·n⌉ = 3."""
    entropy = torch.arange(7, dtype=DTYPE)[None, :]  # (1, 7) distinct
    mask = torch.ones(1, 7, dtype=torch.bool)
    trainer = make_trl(1, loss_type="dapo", top_entropy_quantile=0.3)
    assert int(trainer.get_high_entropy_mask(entropy, mask.long(), 1 - 0.3).sum()) == 2
    assert int(top_k_entropy_mask(entropy, mask, rho=0.3).sum()) == 3


def test_entropy_bonus_differs_from_trl_only_when_micro_batches_hold_different_token_counts(make_trl):
    """Documented difference: TRL's bonus is a mean per micro-batch (÷ grad-accum steps), ours one mean over
    the optimiser step. Equal halves of the tokens agree; unequal halves do not."""
    b = make_batch(seed=4)
    trainer = make_trl(2, loss_type="dapo", entropy_coef=0.5)
    ours = our_losses(b, micro_batches=2, loss_type="dapo", entropy_coef=0.5, with_old=False)
    theirs = trl_losses(trainer, b, micro_batches=2, with_old=False)
    counts = [int(b["mask"][:N // 2].sum()), int(b["mask"][N // 2:].sum())]
    assert counts[0] != counts[1]
    assert not torch.allclose(ours[2], theirs[2])  # d/d entropy: 0.5/31 per token vs 0.5/(2·count_half)
    b["mask"][N // 2:] = b["mask"][:N // 2]  # now both halves hold the same number of tokens
    assert_same(our_losses(b, micro_batches=2, loss_type="dapo", entropy_coef=0.5, with_old=False),
                trl_losses(trainer, b, micro_batches=2, with_old=False))


# ------------------------------------------------------------------ the sampler correction (ALGORITHMS.md §5)
IS_BOUNDS = (0.7, 2.0)  # (C_min, C_max): both bounds act on sampler_batch's weights


def sampler_batch(seed):
    """make_batch with the sampler's log-probs: 0.5 nats from lp_old, one unscored token, garbage on padding."""
    b = make_batch(seed)
    g = torch.Generator().manual_seed(200 + seed)
    b["sampling"] = b["old"] + torch.randn(N, T, generator=g, dtype=DTYPE) * 0.5
    b["sampling"][2, 0] = float("nan")  # a token the sampler could not score
    b["sampling"][1] = float("inf")  # the empty row's padding
    b["sampling"][3, 6] = float("nan")  # padding
    return b


def trl_sampler_lines(trainer, b, *, mode, clip_min, clip_max):
    """TRL 1.16's own lines for the IS ratio and its metrics, cut from _generate_and_score_completions and run on
    b (one process: accelerator.gather is the identity). Returns (ratio, {metric name: value})."""
    source = inspect.getsource(trl.GRPOTrainer._generate_and_score_completions)
    start = source.index("            # Compute the importance sampling ratio when using vLLM")
    ratio_code = source[start:source.index("# Compute the per-token log probabilities for the reference", start)]
    start = source.index("        if self.use_vllm and self.vllm_importance_sampling_correction:\n            delta")
    metrics_code = source[start:source.index("        output = {", start)]
    trainer_self = types.SimpleNamespace(
        use_vllm=True, vllm_importance_sampling_correction=True, vllm_importance_sampling_mode=mode,
        vllm_importance_sampling_clip_min=clip_min, vllm_importance_sampling_clip_max=clip_max,
        accelerator=trainer.accelerator, _metrics={"train": collections.defaultdict(list)})
    namespace = dict(vars(inspect.getmodule(trl.GRPOTrainer)))  # torch, math, nanmin, nanmax as TRL imports them
    namespace.update(self=trainer_self, completion_mask=b["mask"].long(), tool_mask=None, mode="train",
                     old_per_token_logps=b["old"], sampling_per_token_logps=b["sampling"], device="cpu")
    exec(textwrap.dedent(ratio_code), namespace)
    exec(textwrap.dedent(metrics_code), namespace)
    return namespace["vllm_importance_sampling_ratio"], {k: v[0] for k, v in trainer_self._metrics["train"].items()}


@pytest.mark.parametrize("mode", IS_MODES)
@pytest.mark.parametrize("clip_min,clip_max", [(None, 3.0), IS_BOUNDS, (0.8, None)])
def test_sampler_weights_and_stats_equal_trls_own_lines(make_trl, mode, clip_min, clip_max):
    """TRL's ratio element for element, padding included; its metrics from our stats. Documented difference
    [correction C6]: TRL's sequence-mode min/mean/max also count the empty row (row 1) at its weight exp(0)."""
    b = sampler_batch(seed=11)
    theirs, metrics = trl_sampler_lines(make_trl(2, loss_type="dapo"), b, mode=mode, clip_min=clip_min,
                                        clip_max=clip_max)
    ours = sampler_weights(b["old"], b["sampling"], b["mask"], mode=mode, clip_min=clip_min, clip_max=clip_max)
    torch.testing.assert_close(ours, theirs, **TOL[DTYPE])
    st = {k: float(v) for k, v in mismatch_stats(b["old"], b["sampling"], b["mask"], ours, mode=mode).items()}
    got = {"sampling/sampling_logp_difference/mean": st["logp_diff_sum"] / st["logp_diff_count"],
           "sampling/sampling_logp_difference/max": st["logp_diff_max"],
           "sampling/importance_sampling_ratio/min": st["weight_min"],
           "sampling/importance_sampling_ratio/mean": st["weight_sum"] / st["weight_count"],
           "sampling/importance_sampling_ratio/max": st["weight_max"]}
    if mode.startswith("sequence"):  # add TRL's empty row back
        empty = float(ours[1, 0])
        assert not b["mask"][1].any() and st["weight_count"] == N - 1
        got["sampling/importance_sampling_ratio/min"] = min(st["weight_min"], empty)
        got["sampling/importance_sampling_ratio/mean"] = (st["weight_sum"] + empty) / N
        got["sampling/importance_sampling_ratio/max"] = max(st["weight_max"], empty)
    assert got.keys() == metrics.keys()
    for name, value in got.items():
        assert math.isclose(value, metrics[name], rel_tol=1e-12), (name, value, metrics[name])


IS_CASES = [(lt, lvl, mode) for lt, lvl in CASES for mode in IS_MODES
            if not (lt == "vespo" and mode.startswith("sequence"))]  # TRL refuses those too


@pytest.mark.parametrize("loss_type,level,mode", IS_CASES)
def test_loss_and_gradient_equal_trl_with_the_sampler_correction_and_kl(make_trl, loss_type, level, mode):
    """ℓ ← w·ℓ before the KL is added (vespo: log w inside φ), β = 0.04, two micro-batches."""
    b = sampler_batch(seed=11)
    raw = sampler_weights(b["old"], b["sampling"], b["mask"], mode=mode.split("_")[0] + "_mask", clip_max=None)
    rows = b["mask"] if mode.startswith("token") else b["mask"].any(-1, keepdim=True)  # where w acts
    assert (raw[rows] < IS_BOUNDS[0]).any() and (raw[rows] > IS_BOUNDS[1]).any()  # both bounds act
    w = sampler_weights(b["old"], b["sampling"], b["mask"], mode=mode, clip_min=IS_BOUNDS[0], clip_max=IS_BOUNDS[1])
    config = trl_settings(loss_type, level, beta=BETA, use_bias_correction_kl=False)
    ours = our_losses(b, micro_batches=2, sampler_weight=w, **our_options(config))
    assert_same(ours, trl_losses(make_trl(2, **config), b, micro_batches=2, with_ref=True,
                                 importance_sampling_ratio=w))
    assert not torch.allclose(ours[1], our_losses(b, micro_batches=2, **our_options(config))[1])  # w matters
