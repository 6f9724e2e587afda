"""The sampler–trainer importance-sampling correction (grpo.correction, ALGORITHMS.md §5) and its placement in
grpo.loss.policy_loss [D14], against float64 references written longhand (Python floats, one token at a time):
the four modes with unscored tokens, garbage padding, open bounds, overflow and an empty row; the stats; the
weighted surrogate of every loss_type (value and gradient); KL and entropy bonus unweighted; VESPO's log w."""
import math

import pytest
import torch
from conftest import TOL

from grpo.correction import IS_MODES, mismatch_stats, sampler_weights
from grpo.loss import LEVEL_OF, LOSS_TYPES, policy_loss

NAN, INF = float("nan"), float("inf")
EPS_LOW, EPS_HIGH, EPS_MAX = 0.2, 0.28, 1.6  # EPS_MAX: cispo's cap (passed as eps_high)
TAU = (0.9, 1.3)  # SAPO (τ_pos, τ_neg)
VESPO_K, VESPO_LAMBDA = (1.5, 2.5), (2.5, 1.5)  # (A ≥ 0, A < 0)
L = 8  # max_completion_length (dr_grpo)
F64 = torch.float64


# ------------------------------------------------------------------------------------------- references
def clip_or_mask(w, rule, lo, hi, big=torch.finfo(F64).max):
    if rule == "truncate":
        w = w if lo is None else max(w, lo)
        w = w if hi is None else min(w, hi)
    elif (lo is not None and w < lo) or (hi is not None and w > hi):
        w = 0.0
    return min(w, big)  # an unbounded +inf is held at the largest float [C3]


def safe_exp(x):
    return math.exp(x) if x < 709.0 else INF


def reference_weights(old, lp_s, mask, *, mode, lo, hi):
    """Longhand: d = lp_old − lp_s on completion tokens (0 if NaN), else 0; exp per token or of the row sum."""
    level, rule = mode.split("_")
    n, t_len = mask.shape
    d = [[0.0] * t_len for _ in range(n)]
    for i in range(n):
        for t in range(t_len):
            if mask[i, t]:
                x = float(old[i, t]) - float(lp_s[i, t])
                d[i][t] = 0.0 if math.isnan(x) else x
    if level == "token":
        rows = [[clip_or_mask(safe_exp(x), rule, lo, hi) for x in row] for row in d]
    else:
        rows = [[clip_or_mask(safe_exp(sum(row)), rule, lo, hi)] for row in d]
    return torch.tensor(rows, dtype=F64)


def weight_batch(n=6, t=7, seed=0):
    """float64 (N, T) lp_old, lp_s: spread 0.6 nats, two unscored tokens, NaN/±inf on padding, an empty row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 0, 3, 5, 1, t - 1])[:n]
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T) bool
    old = -torch.rand(n, t, generator=g, dtype=F64) * 3
    lp_s = old + torch.randn(n, t, generator=g, dtype=F64) * 0.6
    lp_s[0, 2] = lp_s[3, 4] = NAN  # tokens the sampler could not score
    for x in (old, lp_s):  # garbage on padding
        x[1] = NAN
        x[2, 3:] = INF
        x[4, 1:] = -INF
        x[5, -1] = NAN
    return old, lp_s, mask


BOUNDS = [(None, 3.0), (0.7, 2.0), (0.8, None), (None, None)]  # (C_min, C_max); TRL's defaults first
MODE_BOUNDS = [(m, lo, hi) for m in IS_MODES for lo, hi in BOUNDS if not (m.endswith("truncate") and lo is hi)]


@pytest.mark.parametrize("mode,lo,hi", MODE_BOUNDS)
def test_weights_match_the_float64_reference(mode, lo, hi):
    old, lp_s, mask = weight_batch()
    w = sampler_weights(old, lp_s, mask, mode=mode, clip_min=lo, clip_max=hi)
    expected = reference_weights(old, lp_s, mask, mode=mode, lo=lo, hi=hi)
    assert w.dtype == F64 and w.shape == expected.shape
    torch.testing.assert_close(w, expected, **TOL[F64])
    raw = reference_weights(old, lp_s, mask, mode="token_mask" if mode.startswith("token") else "sequence_mask",
                            lo=None, hi=None)  # exp(d), no bound
    rows = mask if mode.startswith("token") else mask.any(-1, keepdim=True)  # where the weight acts
    if lo is not None:  # each bound set acts on the batch
        assert (raw < lo)[rows].any() and (expected != raw)[rows & (raw < lo)].all()
    if hi is not None:
        assert (raw > hi)[rows].any() and (expected != raw)[rows & (raw > hi)].all()


@pytest.mark.parametrize("mode", IS_MODES)
def test_garbage_on_padding_changes_no_weight(mode):
    old, lp_s, mask = weight_batch()
    clean_old, clean_s = old.masked_fill(~mask, -1.0), lp_s.masked_fill(~mask, -2.0)
    w = sampler_weights(old, lp_s, mask, mode=mode, clip_min=0.5, clip_max=2.0)
    assert torch.isfinite(w).all()
    assert torch.equal(w, sampler_weights(clean_old, clean_s, mask, mode=mode, clip_min=0.5, clip_max=2.0))


def test_hand_worked_example():
    # one row, d = lp_old − lp_s = (0.5, −0.2, NaN → 0, padding): token ratios e^0.5 = 1.6487, e^−0.2 = 0.8187,
    # 1; the sequence ratio e^(0.5 − 0.2 + 0) = e^0.3 = 1.3499. With C_max = 1.5, C_min = 0.9:
    old = torch.tensor([[-1.0, -2.0, -1.0, 5.0]], dtype=F64)
    lp_s = torch.tensor([[-1.5, -1.8, NAN, NAN]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    w = lambda mode: sampler_weights(old, lp_s, mask, mode=mode, clip_min=0.9, clip_max=1.5)  # noqa: E731
    e = math.exp
    torch.testing.assert_close(w("token_truncate"), torch.tensor([[1.5, 0.9, 1.0, 1.0]], dtype=F64))  # clipped
    torch.testing.assert_close(w("token_mask"), torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=F64))  # both out
    torch.testing.assert_close(w("sequence_truncate"), torch.tensor([[e(0.3)]], dtype=F64))  # 1.35 is inside
    torch.testing.assert_close(w("sequence_mask"), torch.tensor([[e(0.3)]], dtype=F64))
    torch.testing.assert_close(sampler_weights(old, lp_s, mask, mode="token_truncate", clip_max=3.0),
                               torch.tensor([[e(0.5), e(-0.2), 1.0, 1.0]], dtype=F64))  # C_min unset


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_overflowing_sequence_is_clipped_or_masked_and_never_nan(dtype):
    """+100 nats (exp overflows fp32 to inf) and −100 nats; one token with lp_s = −inf; the empty row; a row
    with d = +inf and d = −inf, whose sum counts 0 [C3] (never inf − inf = NaN)."""
    mask = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False], [False] * 4, [True, True, True, False]])
    old = torch.zeros(5, 4, dtype=dtype)
    old[4, 1] = -INF  # a token the trainer gives probability 0
    lp_s = torch.tensor([[-25.0] * 4, [25.0] * 4, [-1.0, -INF, 0.0, 0.0], [NAN] * 4, [-INF, 0.0, 0.0, NAN]],
                        dtype=dtype)
    for mode in IS_MODES:
        for lo, hi in BOUNDS:
            if mode.endswith("truncate") and lo is hi:
                continue
            w = sampler_weights(old, lp_s, mask, mode=mode, clip_min=lo, clip_max=hi)
            assert w.dtype == torch.float32 and torch.isfinite(w).all() and (w >= 0).all(), (mode, lo, hi)
            if mode.startswith("sequence"):
                big = torch.finfo(torch.float32).max if hi is None else (hi if mode.endswith("truncate") else 0.0)
                small = (lo or 0.0) if mode.endswith("truncate") else 0.0  # e^−100 ≈ 4e-44 (or masked), or clipped up
                one = clip_or_mask(1.0, mode.split("_")[1], lo, hi)
                expected = [big, small, big, one, one]
                assert w[:, 0].tolist() == pytest.approx(expected), (mode, lo, hi)


def test_weights_carry_no_gradient_and_run_in_fp32_or_fp64():
    old, lp_s, mask = weight_batch()
    old = old.clone().requires_grad_()
    w = sampler_weights(old, lp_s, mask, mode="token_truncate")
    assert not w.requires_grad
    assert sampler_weights(old.detach().bfloat16(), lp_s.bfloat16(), mask, mode="sequence_mask").dtype == torch.float32


def test_bad_modes_and_bounds_are_rejected():
    old, lp_s, mask = weight_batch()
    with pytest.raises(ValueError, match="mode must be one of"):
        sampler_weights(old, lp_s, mask, mode="token")
    with pytest.raises(ValueError, match="less than"):
        sampler_weights(old, lp_s, mask, mode="token_mask", clip_min=2.0, clip_max=2.0)
    with pytest.raises(ValueError, match="needs clip_min or clip_max"):
        sampler_weights(old, lp_s, mask, mode="sequence_truncate", clip_max=None)
    with pytest.raises(ValueError, match="mode must be one of"):
        mismatch_stats(old, lp_s, mask, torch.ones_like(old), mode="sequence")


# ------------------------------------------------------------------------------------------- stats
def reference_stats(old, lp_s, mask, w, *, mode):
    gaps = [abs(float(old[i, t]) - float(lp_s[i, t])) for i in range(mask.shape[0]) for t in range(mask.shape[1])
            if mask[i, t] and not math.isnan(float(lp_s[i, t]))]
    if mode.startswith("token"):
        ws = [float(w[i, t]) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t]]
    else:
        ws = [float(w[i, 0]) for i in range(mask.shape[0]) if mask[i].any()]
    return dict(logp_diff_sum=sum(gaps), logp_diff_count=len(gaps), logp_diff_max=max(gaps, default=0.0),
                weight_sum=sum(ws), weight_count=len(ws), weight_min=min(ws, default=INF),
                weight_max=max(ws, default=0.0))


@pytest.mark.parametrize("mode", IS_MODES)
def test_stats_match_the_float64_reference(mode):
    old, lp_s, mask = weight_batch()
    w = sampler_weights(old, lp_s, mask, mode=mode, clip_min=0.5, clip_max=2.0)
    stats = mismatch_stats(old, lp_s, mask, w, mode=mode)
    expected = reference_stats(old, lp_s, mask, w, mode=mode)
    assert stats.keys() == expected.keys()
    for key, value in stats.items():
        assert value.dim() == 0 and value.dtype == F64 and not value.requires_grad, key
        assert math.isclose(float(value), expected[key], rel_tol=1e-12), (key, float(value), expected[key])
    assert expected["logp_diff_count"] == int(mask.sum()) - 2  # the two unscored tokens are left out
    assert expected["weight_count"] == (int(mask.sum()) if mode.startswith("token") else 5)  # not the empty row


def test_stats_of_an_empty_selection_are_the_identities_of_their_reductions():
    old, lp_s, mask = weight_batch()
    mask = torch.zeros_like(mask)
    for mode in IS_MODES:
        w = sampler_weights(old, lp_s, mask, mode=mode)
        stats = {k: float(v) for k, v in mismatch_stats(old, lp_s, mask, w, mode=mode).items()}
        assert stats == dict(logp_diff_sum=0.0, logp_diff_count=0.0, logp_diff_max=0.0, weight_sum=0.0,
                             weight_count=0.0, weight_min=INF, weight_max=0.0), mode


# ------------------------------------------------------------------------------------------- the loss
def loss_batch(n=6, t=L, seed=1):
    """float64 batch for policy_loss; weights spread over (0, 2.2), some 0 (masked), NaN on padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 0, 3, 5, 1, t - 2])[:n]
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T) bool
    logp = -torch.rand(n, t, generator=g, dtype=F64) * 3
    b = dict(mask=mask, logp=logp, old=logp + torch.randn(n, t, generator=g, dtype=F64) * 0.4,
             ref=logp + torch.randn(n, t, generator=g, dtype=F64) * 0.5,
             ent=torch.rand(n, t, generator=g, dtype=F64) * 2, adv=torch.randn(n, generator=g, dtype=F64))
    w_tok = torch.rand(n, t, generator=g, dtype=F64) * 2.2
    w_tok[0, 1] = w_tok[3, 0] = 0.0  # masked tokens
    b["w_token"] = w_tok.masked_fill(~mask, NAN)  # padding garbage: must change nothing
    b["w_sequence"] = torch.tensor([[1.7], [NAN], [0.0], [0.4], [2.2], [1.1]], dtype=F64)[:n]  # the empty row: NaN
    return b


def run_policy_loss(b, *, loss_type, level, w, beta=0.0, coef=0.0, w_requires_grad=False):
    logp, ent = b["logp"].clone().requires_grad_(), b["ent"].clone().requires_grad_()
    if w is not None and w_requires_grad:
        w = w.clone().requires_grad_()
    eps_high = EPS_MAX if loss_type == "cispo" else EPS_HIGH
    loss, _ = policy_loss(
        logp, b["old"], b["adv"], b["mask"], loss_type=loss_type, eps_low=EPS_LOW, eps_high=eps_high,
        importance_sampling_level=level, sapo_temperature=TAU, vespo_k=VESPO_K, vespo_lambda=VESPO_LAMBDA,
        sampler_weight=w, ref_logp=b["ref"], beta=beta, entropy=ent, entropy_coef=coef,
        num_sequences=b["mask"].shape[0], num_tokens=int(b["mask"].sum()), max_completion_length=L)
    loss.backward()
    if w is not None and w_requires_grad:
        assert w.grad is None, "the sampler weight must carry no gradient"
    return loss.detach(), logp.grad, torch.zeros_like(ent) if ent.grad is None else ent.grad


def reference_weighted_loss(logp, old, adv, mask, w, *, loss_type, level):
    """Longhand: Agg over tokens of w·ℓ, w a Python float (a constant: stop-gradient), one micro-batch."""
    n, t_len = mask.shape
    rows = []
    for i in range(n):
        toks = [t for t in range(t_len) if mask[i, t]]
        a = float(adv[i])
        s = torch.exp(sum(logp[i, t] - old[i, t] for t in toks) / len(toks)) if toks else None
        row = []
        for t in toks:
            rho = s if level == "sequence" else torch.exp(logp[i, t] - old[i, t])
            if LOSS_TYPES[loss_type][0] == "clipped":
                loss = -torch.minimum(rho * a, torch.clamp(rho, 1 - EPS_LOW, 1 + EPS_HIGH) * a)
            elif loss_type == "cispo":
                loss = -min(rho.item(), EPS_MAX) * a * logp[i, t]
            else:  # sapo
                tau = TAU[0] if a > 0 else TAU[1]
                loss = -(4 / tau) * torch.sigmoid(tau * (rho - 1)) * a
            weight = float(w[i, t]) if w.shape[1] == t_len else float(w[i, 0])
            row.append(weight * loss)
        rows.append(row)
    zero = torch.zeros((), dtype=F64)
    every = [x for row in rows for x in row]
    total, count = sum(every, zero), int(mask.sum())
    aggregation = LOSS_TYPES[loss_type][1]
    if aggregation == "grpo":
        return sum((sum(row, zero) / len(row) for row in rows if row), zero) / n
    if aggregation in ("dapo", "bnpo"):  # one micro-batch: bnpo is the token mean
        return total / count
    if aggregation == "dr_grpo":
        return total / (n * L)
    return total / n  # luspo


PLACEMENT = [(lt, lvl, kind) for lt in LOSS_TYPES if lt != "vespo" for lvl in ("token", "sequence")
             if LEVEL_OF.get(lt, lvl) == lvl for kind in ("token", "sequence")]


@pytest.mark.parametrize("loss_type,level,kind", PLACEMENT)
def test_weighted_surrogate_matches_the_float64_reference_and_the_weight_has_no_gradient(loss_type, level, kind):
    b = loss_batch()
    loss, grad, _ = run_policy_loss(b, loss_type=loss_type, level=level, w=b[f"w_{kind}"], w_requires_grad=True)
    logp = b["logp"].clone().requires_grad_()
    expected = reference_weighted_loss(logp, b["old"], b["adv"], b["mask"], b[f"w_{kind}"], loss_type=loss_type,
                                       level=level)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), **TOL[F64])
    torch.testing.assert_close(grad, logp.grad, **TOL[F64])
    assert logp.grad.abs().sum() > 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("loss_type,level,kind", PLACEMENT)
def test_kl_and_entropy_bonus_are_not_weighted(loss_type, level, kind):
    """loss(w, β, c) − loss(w, 0, 0) is the same for w and for w ≡ 1 (value and gradient)."""
    b = loss_batch()
    ones = torch.ones_like(b[f"w_{kind}"])
    extra = []
    for w in (b[f"w_{kind}"], ones):
        with_terms = run_policy_loss(b, loss_type=loss_type, level=level, w=w, beta=0.3, coef=0.05)
        without = run_policy_loss(b, loss_type=loss_type, level=level, w=w)
        extra.append([x - y for x, y in zip(with_terms, without)])
    for x, y in zip(*extra):
        torch.testing.assert_close(x, y, **TOL[F64])
    assert extra[0][0].abs() > 1e-4 and extra[0][2].abs().sum() > 0  # the KL and the bonus are there


@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
def test_a_weight_of_one_changes_nothing_exactly(loss_type):
    b = loss_batch()
    level = LEVEL_OF.get(loss_type, "token")
    plain = run_policy_loss(b, loss_type=loss_type, level=level, w=None, beta=0.3, coef=0.05)
    kinds = ("token",) if loss_type == "vespo" else ("token", "sequence")
    for kind in kinds:
        ones = torch.ones_like(b[f"w_{kind}"])
        for x, y in zip(run_policy_loss(b, loss_type=loss_type, level=level, w=ones, beta=0.3, coef=0.05), plain):
            assert torch.equal(x, y), (loss_type, kind)


def test_vespo_adds_the_log_weights_into_its_sequence_log_weight():
    """φ_i from log w_i = clip(Σ_t clip(lp_θ − lp_old, ±20) + Σ_t clip(log w_IS, log 1e-8, 20), log 1e-8, 20)."""
    b = loss_batch()
    w = b["w_token"].clone()
    w[2, :3] = torch.tensor([1e12, 1e-7, 1e-7])  # Σ log w = 27.6 − 2·16.1: the 20-nat clip of a token shows in φ
    w[3, 1] = 1e8  # log 18.4 against the masked w[3, 0] = 0, counted log 1e-8 = −18.4: Σ ≈ 0
    loss, grad, _ = run_policy_loss(b, loss_type="vespo", level="token", w=w, w_requires_grad=True)
    logp = b["logp"].clone().requires_grad_()
    mask, n = b["mask"], b["mask"].shape[0]
    total = torch.zeros((), dtype=F64)
    for i in range(n):
        toks = [t for t in range(mask.shape[1]) if mask[i, t]]
        a = float(b["adv"][i])
        log_w = sum(min(max((logp[i, t] - b["old"][i, t]).item(), -20.0), 20.0) for t in toks)  # detached
        log_w += sum(min(max(math.log(w[i, t]) if w[i, t] > 0 else -INF, math.log(1e-8)), 20.0) for t in toks)
        log_w = min(max(log_w, math.log(1e-8)), 20.0)
        k, lam = (VESPO_K[0], VESPO_LAMBDA[0]) if a >= 0 else (VESPO_K[1], VESPO_LAMBDA[1])
        phi = math.exp(lam + k * log_w - lam * math.exp(log_w))
        total = total + sum((-phi * a * logp[i, t] for t in toks), torch.zeros((), dtype=F64))
    expected = total / int(mask.sum())  # vespo aggregates like dapo
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), **TOL[F64])
    torch.testing.assert_close(grad, logp.grad, **TOL[F64])
    unweighted = run_policy_loss(b, loss_type="vespo", level="token", w=None)
    assert not torch.allclose(grad, unweighted[1])  # the weights moved φ


def test_inconsistent_sampler_weights_are_rejected():
    b = loss_batch()
    with pytest.raises(ValueError, match="vespo needs a token-level sampler_weight"):
        run_policy_loss(b, loss_type="vespo", level="token", w=b["w_sequence"])
    with pytest.raises(ValueError, match=r"must be \(N, T\) or \(N, 1\)"):
        run_policy_loss(b, loss_type="dapo", level="token", w=b["w_token"][:, :3])
