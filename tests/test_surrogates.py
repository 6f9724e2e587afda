"""The rest of TRL's policy-loss family (grpo.surrogates, ALGORITHMS.md §2b) through grpo.loss.policy_loss: luspo,
cispo, sapo, vespo, the off-policy sequence mask and the ratio-weighted KL against a float64 reference written
longhand (one token at a time, Python floats where TRL detaches) — the mask and KL options for all eight
loss_types —, hand-worked examples, μ = 1, the micro-batch split, and huge ratios."""
import math

import pytest
import torch
from conftest import TOL

from grpo.loss import policy_loss
from grpo.surrogates import off_policy_mask, sapo_surrogate, vespo_weight

EPS_LOW, EPS_HIGH, EPS_MAX = 0.2, 0.28, 1.6
TAU = (0.9, 1.3)  # SAPO (τ_pos, τ_neg)
VESPO_K, VESPO_LAMBDA = (1.5, 2.5), (2.5, 1.5)  # (A ≥ 0, A < 0)
NEW = [("luspo", "sequence"), ("cispo", "token"), ("sapo", "token"), ("sapo", "sequence"), ("vespo", "token")]
ALL = [(lt, lvl) for lt in ("grpo", "dapo", "dr_grpo", "bnpo") for lvl in ("token", "sequence")] + NEW
L = 8  # max_completion_length (dr_grpo)


def reference_loss(logp, old, adv, mask, *, loss_type, level, lp_s=None, mask_threshold=None, ref=None, beta=0.0,
                   bias_kl=False, n_total, k_total):
    """Longhand float64: Σ over micro-batch rows of each token's loss, with the loss_type's normaliser."""
    n, t_len = mask.shape
    rows_pg, rows_kl = [], []
    for i in range(n):
        toks = [t for t in range(t_len) if mask[i, t]]
        a = float(adv[i])
        log_ratios = [logp[i, t] - old[i, t] for t in toks]
        s = torch.exp(sum(log_ratios) / len(toks)) if toks else None  # GSPO's sequence ratio
        if loss_type == "vespo":  # φ from Python floats: detached
            log_w = sum(min(max(x.item(), -20.0), 20.0) for x in log_ratios)
            log_w = min(max(log_w, math.log(1e-8)), 20.0)
            k, lam = (VESPO_K[0], VESPO_LAMBDA[0]) if a >= 0 else (VESPO_K[1], VESPO_LAMBDA[1])
            phi = math.exp(lam + k * log_w - lam * math.exp(log_w))
        keep = True
        if mask_threshold is not None:
            source = old if lp_s is None else lp_s
            drift = sum(float(source[i, t]) - logp[i, t].item() for t in toks) / max(len(toks), 1)
            keep = a >= 0 or drift <= mask_threshold
        pg, kl = [], []
        for t, x in zip(toks, log_ratios):
            rho = s if level == "sequence" else torch.exp(x)
            if loss_type in ("grpo", "dapo", "dr_grpo", "bnpo", "luspo"):  # the clipped surrogate
                loss = -torch.minimum(rho * a, torch.clamp(rho, 1 - EPS_LOW, 1 + EPS_HIGH) * a)
            elif loss_type == "cispo":
                loss = -min(rho.item(), EPS_MAX) * a * logp[i, t]
            elif loss_type == "sapo":
                tau = TAU[0] if a > 0 else TAU[1]
                loss = -(4 / tau) * torch.sigmoid(tau * (rho - 1)) * a
            else:  # vespo
                loss = -phi * a * logp[i, t]
            pg.append(loss if keep else 0.0 * loss)
            if ref is not None:
                y = ref[i, t] - logp[i, t]
                kl.append((torch.exp(y) - y - 1) * (rho if bias_kl else 1.0))
        rows_pg.append(pg)
        rows_kl.append(kl)

    def agg(rows):
        total = torch.zeros((), dtype=torch.float64)
        for row in rows:
            if row and loss_type in ("grpo", "sapo"):  # sequence-mean of token-means
                total = total + sum(row) / len(row) / n_total
            elif row and loss_type == "luspo":  # each sequence's sum, over N
                total = total + sum(row) / n_total
            elif row and loss_type == "dr_grpo":
                total = total + sum(row) / (n_total * L)
            elif row and loss_type == "bnpo":  # the local token mean, weighted by the rows' share of N
                total = total + sum(row) / sum(len(r) for r in rows) * n / n_total
            elif row:  # dapo, cispo, vespo: the token mean over the batch
                total = total + sum(row) / k_total
        return total

    return agg(rows_pg) + (beta * agg(rows_kl) if beta else 0.0)


def make_batch(n=6, t=8, seed=0, spread=1.2):
    """G = 2: rows (0, 1), (2, 3), (4, 5) are groups with A = ±a; ragged lengths with one empty row; token
    log-ratios N(0, spread²), so ρ from ~0.03 to ~30."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 0, 3, 5, 1, 7])[:n]
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T) bool
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    a = torch.rand(n // 2, generator=g, dtype=torch.float64) + 0.3
    return dict(logp=logp, mask=mask, adv=torch.stack([a, -a], 1).reshape(-1),  # (N,) both signs in every group
                old=logp + torch.randn(n, t, generator=g, dtype=torch.float64) * spread,
                ref=logp + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.5,
                sampling=logp + 0.2 + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.3)  # drifted


def ours(b, *, loss_type, level, rows=slice(None), n_total=None, k_total=None, with_sampling=False, **options):
    logp = b["logp"][rows].clone().requires_grad_()
    loss, stats = policy_loss(
        logp, b["old"][rows], b["adv"][rows], b["mask"][rows], loss_type=loss_type, eps_low=EPS_LOW,
        eps_high=EPS_MAX if loss_type == "cispo" else EPS_HIGH, importance_sampling_level=level,
        sapo_temperature=TAU, vespo_k=VESPO_K, vespo_lambda=VESPO_LAMBDA, ref_logp=b["ref"][rows],
        sampling_logp=b["sampling"][rows] if with_sampling else None,
        num_sequences=b["mask"].shape[0] if n_total is None else n_total,
        num_tokens=int(b["mask"].sum()) if k_total is None else k_total, max_completion_length=L, **options)
    loss.backward()
    return loss.detach(), logp.grad, stats


def reference(b, *, loss_type, level, with_sampling=False, off_policy_mask_threshold=None, beta=0.0,
              use_bias_correction_kl=False):
    logp = b["logp"].clone().requires_grad_()
    loss = reference_loss(logp, b["old"], b["adv"], b["mask"], loss_type=loss_type, level=level,
                          lp_s=b["sampling"] if with_sampling else None, mask_threshold=off_policy_mask_threshold,
                          ref=b["ref"], beta=beta, bias_kl=use_bias_correction_kl, n_total=b["mask"].shape[0],
                          k_total=int(b["mask"].sum()))
    loss.backward()
    return loss.detach(), logp.grad


OPTIONS = [dict(), dict(beta=0.04), dict(beta=0.04, use_bias_correction_kl=True),
           dict(off_policy_mask_threshold=0.1), dict(off_policy_mask_threshold=0.1, with_sampling=True)]


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "kl", "ratio_kl", "mask_old", "mask_sampler"])
@pytest.mark.parametrize("loss_type,level", ALL)
def test_every_loss_type_and_option_matches_the_float64_reference(loss_type, level, options):
    b = make_batch()
    loss, grad, stats = ours(b, loss_type=loss_type, level=level, **options)
    ref_loss, ref_grad = reference(b, loss_type=loss_type, level=level, **options)
    torch.testing.assert_close(loss, ref_loss, **TOL[torch.float64])
    torch.testing.assert_close(grad, ref_grad, **TOL[torch.float64])
    assert grad.abs().sum() > 0 and not grad[~b["mask"]].any()  # padding gets exactly 0
    if "off_policy_mask_threshold" in options:
        assert 0 < stats.off_policy_masked < 1  # the mask drops some sequences, not all


@pytest.mark.parametrize("loss_type,level", NEW)
def test_new_loss_types_match_the_float64_reference_for_float32_inputs(loss_type, level):
    b = make_batch(seed=1)
    b32 = {k: v.float() if v.is_floating_point() else v for k, v in b.items()}
    loss, grad, _ = ours(b32, loss_type=loss_type, level=level, beta=0.04)
    b64 = {k: v.double() if v.is_floating_point() else v for k, v in b32.items()}  # the same rounded inputs
    ref_loss, ref_grad = reference(b64, loss_type=loss_type, level=level, beta=0.04)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, **TOL[torch.float32])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[torch.float32])


@pytest.mark.parametrize("loss_type,level", NEW)
def test_at_mu_1_the_gradient_is_the_plain_policy_gradient_with_the_loss_types_weights(loss_type, level):
    """ρ ≡ 1: SAPO's gate has slope 1, CISPO's weight is min(1, ε_max) = 1, VESPO's φ(1) = 1, LUSPO's s = 1:
    every one gives ∇ = −w·A·∇lp_θ with w its normaliser (sapo: 1/(N·|o_i|); cispo, vespo: 1/Σm; luspo: 1/N)."""
    b = make_batch(seed=2)
    b["old"] = b["logp"].clone()
    n_total, k_total, mask = 10, int(b["mask"].sum()) + 13, b["mask"]  # one micro-batch of a larger batch
    _, grad, stats = ours(b, loss_type=loss_type, level=level, n_total=n_total, k_total=k_total)
    lengths = mask.sum(1, keepdim=True).clamp(min=1).double()  # (N, 1)
    w = {"sapo": 1 / (n_total * lengths), "cispo": 1 / k_total, "vespo": 1 / k_total, "luspo": 1 / n_total}[loss_type]
    torch.testing.assert_close(grad, torch.where(mask, -w * b["adv"][:, None], 0.0), **TOL[torch.float64])
    assert stats.ratio_mean == 1
    if loss_type == "vespo":
        assert stats.vespo_phi_seq_mean == 1


def test_off_policy_mask_keeps_everything_at_mu_1():
    """[surrogates D4]: lp_s = lp_old = sg[lp_θ] gives a mean drift of 0 ≤ δ for every sequence."""
    b = make_batch(seed=3)
    b["old"] = b["logp"].clone()
    _, masked, stats = ours(b, loss_type="sapo", level="token", off_policy_mask_threshold=0.0)
    _, plain, _ = ours(b, loss_type="sapo", level="token")
    assert stats.off_policy_masked == 0 and torch.equal(masked, plain)


SPLITS = [[6], [2, 4], [1, 3, 2]]


@pytest.mark.parametrize("loss_type,level", NEW)
def test_new_loss_types_gradient_is_invariant_to_the_micro_batch_split(loss_type, level):
    b = make_batch(seed=4)
    results = []
    for sizes in SPLITS:
        loss_sum, grads, start = 0.0, [], 0
        for size in sizes:
            loss, grad, _ = ours(b, loss_type=loss_type, level=level, rows=slice(start, start + size),
                                 n_total=6, k_total=int(b["mask"].sum()), beta=0.04, use_bias_correction_kl=True,
                                 off_policy_mask_threshold=0.1)
            loss_sum, start = loss_sum + loss, start + size
            grads.append(grad)
        results.append((loss_sum, torch.cat(grads)))
    for loss_sum, grad in results[1:]:
        torch.testing.assert_close(loss_sum, results[0][0], **TOL[torch.float64])
        torch.testing.assert_close(grad, results[0][1], **TOL[torch.float64])


@pytest.mark.parametrize("loss_type,level,adv", [("cispo", "token", 1.0), ("cispo", "token", -1.0),
                                                  ("sapo", "token", 1.0), ("sapo", "token", -1.0),
                                                  ("sapo", "sequence", -1.0), ("vespo", "token", -1.0),
                                                  ("luspo", "sequence", 1.0)])
def test_a_huge_ratio_gives_a_finite_loss_and_the_reference_gradient_in_float32(loss_type, level, adv):
    """lp_θ − lp_old ≈ 100 overflows exp in fp32; where the math is bounded the result must be, not NaN [D5]."""
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -1.1]])
    old = torch.tensor([[-100.5, -100.2, -101.9], [-0.3, -0.6, -1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    b = dict(logp=logp, old=old, adv=torch.tensor([adv, 0.5]), mask=mask, ref=logp, sampling=logp)
    loss, grad, stats = ours(b, loss_type=loss_type, level=level)
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), (loss, grad)
    assert torch.isfinite(stats.ratio_mean)  # counted at the cap
    ref_loss, ref_grad = reference({k: v.double() if v.is_floating_point() else v for k, v in b.items()},
                                   loss_type=loss_type, level=level)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


def test_hand_worked_examples():
    # One sequence of 2 tokens, ρ = (2, 0.5), lp_θ = (log 0.5, log 0.25), N = 1, Σm = 2.
    logp = torch.log(torch.tensor([[0.5, 0.25]], dtype=torch.float64))
    old = logp - torch.log(torch.tensor([[2.0, 0.5]], dtype=torch.float64))
    mask = torch.ones(1, 2, dtype=torch.bool)

    def run(loss_type, adv, **kw):
        lp = logp.clone().requires_grad_()
        loss, stats = policy_loss(lp, old, torch.tensor([adv], dtype=torch.float64), mask, loss_type=loss_type,
                                  eps_low=0.2, eps_high=kw.pop("eps_high", 0.28), num_sequences=1, num_tokens=2,
                                  max_completion_length=2, **kw)
        loss.backward()
        return loss.item(), lp.grad, stats

    # cispo, ε_max = 1.5, A = 1: weights min(2, 1.5) = 1.5, 0.5; ℓ = −(1.5·log 0.5 + 0.5·log 0.25)/2
    #   = −(−1.0397 − 0.6931)/2 = 0.8664; ∇ = −(1.5, 0.5)/2; 1 of 2 tokens capped
    loss, grad, stats = run("cispo", 1.0, eps_high=1.5)
    assert math.isclose(loss, -(1.5 * math.log(0.5) + 0.5 * math.log(0.25)) / 2, rel_tol=1e-12)
    assert math.isclose(loss, 0.866434, abs_tol=1e-6) and stats.cispo_clip_ratio == 0.5
    torch.testing.assert_close(grad, torch.tensor([[-0.75, -0.25]], dtype=torch.float64))
    # sapo, τ_neg = 1, A = −1: gate 4σ(ρ − 1) = 4σ(1) = 2.9242, 4σ(−0.5) = 1.5102; ℓ = +gate, grpo mean over 2:
    #   (2.9242 + 1.5102)/2 = 2.2172; ∂ℓ/∂lp = 4σ(1−σ)·ρ·(−A)/2 = (4·0.1966·2, 4·0.2350·0.5)/2 = (0.7864, 0.2350)
    loss, grad, _ = run("sapo", -1.0, sapo_temperature=(1.0, 1.0))
    sig = torch.sigmoid(torch.tensor([1.0, -0.5], dtype=torch.float64))
    assert math.isclose(loss, float(4 * sig.sum() / 2), rel_tol=1e-12) and math.isclose(loss, 2.21720, abs_tol=1e-5)
    torch.testing.assert_close(grad, (4 * sig * (1 - sig) * torch.tensor([2.0, 0.5], dtype=torch.float64) / 2)[None])
    # vespo, A = 1, (k, λ) = (2, 3): w = 2·0.5 = 1, φ(1) = e^{3 + 0 − 3} = 1: ℓ = −(log 0.5 + log 0.25)/2 = 1.0397
    loss, grad, stats = run("vespo", 1.0)
    assert math.isclose(loss, 1.5 * math.log(2), rel_tol=1e-12) and stats.vespo_phi_seq_mean == 1
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5]], dtype=torch.float64))
    # luspo at sequence level, A = 1: s = exp((log 2 + log 0.5)/2) = 1, ℓ = −1 per token, summed over the
    #   sequence and divided by N = 1: −2 (grpo would give −1)
    assert run("luspo", 1.0, importance_sampling_level="sequence")[0] == pytest.approx(-2.0, abs=1e-12)


def test_vespo_weight_and_off_policy_mask_by_hand():
    # φ(w) = e^λ·w^k·e^{−λw}: w = e^{0.5} (two tokens at 0.25), A ≥ 0, (k, λ) = (2, 3):
    #   φ = exp(3 + 2·0.5 − 3·e^{0.5}) = exp(4 − 4.9462) = 0.38823; A < 0, (3, 2): exp(2 + 1.5 − 2·1.6487) = 1.2245
    log_ratio = torch.tensor([[0.25, 0.25, 9.0]], dtype=torch.float64).repeat(2, 1)  # third column is padding
    mask = torch.tensor([[True, True, False]] * 2)
    phi = vespo_weight(log_ratio, mask, torch.tensor([[1.0], [-1.0]], dtype=torch.float64), k_pos=2.0,
                       lambda_pos=3.0, k_neg=3.0, lambda_neg=2.0)
    expected = [math.exp(3 + 1 - 3 * math.exp(0.5)), math.exp(2 + 1.5 - 2 * math.exp(0.5))]
    torch.testing.assert_close(phi, torch.tensor([expected], dtype=torch.float64).T)
    assert abs(expected[0] - 0.38823) < 1e-5 and abs(expected[1] - 1.2245) < 1e-4
    # Off-policy mask, δ = 0.1: mean(lp_s − lp_θ) = (0.3 + 0.1)/2 = 0.2 > δ drops A < 0 only; NaN counts 0:
    #   (0.3 + 0)/2 = 0.15 > δ still drops; a row of 0.1 exactly is kept (≤ δ)
    logp = torch.zeros(4, 2, dtype=torch.float64)
    lp_s = torch.tensor([[0.3, 0.1], [0.3, 0.1], [0.3, float("nan")], [0.1, 0.1]], dtype=torch.float64)
    adv = torch.tensor([[1.0], [-1.0], [-1.0], [-1.0]], dtype=torch.float64)
    keep = off_policy_mask(logp, lp_s, adv, torch.ones(4, 2, dtype=torch.bool), threshold=0.1)
    assert keep.squeeze(1).tolist() == [True, False, False, True]


def test_sapo_temperature_follows_the_advantage_sign():
    ratio = torch.full((3, 1), 1.5, dtype=torch.float64)
    adv = torch.tensor([[1.0], [0.0], [-1.0]], dtype=torch.float64)
    got = sapo_surrogate(ratio, adv, temperature_pos=1.0, temperature_neg=3.0)
    want = [-4 * torch.sigmoid(torch.tensor(0.5)).item(), 0.0, 4 / 3 * torch.sigmoid(torch.tensor(1.5)).item()]
    torch.testing.assert_close(got.squeeze(1), torch.tensor(want, dtype=torch.float64))


def test_inconsistent_loss_type_options_are_rejected():
    b = make_batch()
    with pytest.raises(ValueError, match="needs importance_sampling_level='sequence'"):
        ours(b, loss_type="luspo", level="token")
    with pytest.raises(ValueError, match="needs importance_sampling_level='token'"):
        ours(b, loss_type="vespo", level="sequence")
    with pytest.raises(ValueError, match="needs importance_sampling_level='token'"):
        ours(b, loss_type="cispo", level="sequence")
    with pytest.raises(ValueError, match="delta"):
        ours(b, loss_type="sapo", level="token", delta=2.0)
    with pytest.raises(ValueError, match="selected_tokens"):
        ours(b, loss_type="luspo", level="sequence", token_normalizer="selected_tokens")
