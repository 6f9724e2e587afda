"""grpo.loss against a float64 reference written longhand (scalar loops), plus the properties the trainer
relies on: padding is inert, μ = 1 gives the plain policy gradient, the gradient ignores the micro-batch
split."""
import math

import pytest
import torch
from conftest import TOL

from grpo.loss import clipped_surrogate, policy_loss, sequence_ratio, token_ratio

EPS_LOW, EPS_HIGH = 0.2, 0.28


def reference_policy_loss(logp, old, adv, mask, *, loss_type, level, sel=None, normalizer="all_tokens",
                          delta=None, ref=None, beta=0.0, ent=None, coef=0.0, n_total, k_total, k_sel_total, L):
    """Longhand float64, one token at a time. Returns a scalar tensor differentiable w.r.t. logp and ent."""
    n, t_len = mask.shape
    sel = mask if sel is None else sel & mask
    pg_terms, kl_terms = [], []  # per sequence: list of (loss, counts-for-selection?) per token
    for i in range(n):
        toks = [t for t in range(t_len) if mask[i, t]]
        if level == "sequence":
            s = torch.exp(sum(logp[i, t] - old[i, t] for t in toks) / len(toks)) if toks else None
        pg_row, kl_row = [], []
        for t in toks:
            rho = s if level == "sequence" else torch.exp(logp[i, t] - old[i, t])
            unclipped = rho if delta is None else torch.clamp(rho, max=delta)
            clipped = torch.clamp(rho, 1 - EPS_LOW, 1 + EPS_HIGH)
            loss = -torch.minimum(unclipped * adv[i], clipped * adv[i])
            pg_row.append(loss if sel[i, t] else None)
            if ref is not None:
                x = ref[i, t] - logp[i, t]
                kl_row.append(torch.exp(x) - x - 1)
        pg_terms.append(pg_row)
        kl_terms.append(kl_row)

    def agg(rows, use_selected):
        total = torch.zeros((), dtype=torch.float64)
        if loss_type == "grpo":
            for row in rows:
                vals = [v for v in row if v is not None]
                count = sum(v is not None for v in row) if use_selected else len(row)
                if vals:
                    total = total + sum(vals) / max(count, 1)
            return total / n_total
        vals = [v for row in rows for v in row if v is not None]
        s = sum(vals) if vals else total
        if loss_type == "dapo":
            return s / (k_sel_total if use_selected else k_total)
        if loss_type == "dr_grpo":
            return s / (n_total * L)
        local = sum(v is not None for row in rows for v in row) if use_selected else sum(len(r) for r in rows)
        return s / max(local, 1) * n / n_total  # bnpo

    total = agg(pg_terms, normalizer == "selected_tokens")
    if beta:
        total = total + beta * agg(kl_terms, False)
    if coef:
        h = [ent[i, t] for i in range(n) for t in range(t_len) if sel[i, t]]
        total = total - coef * sum(h) / k_sel_total
    return total


def make_batch(n=6, t=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    lengths[0] = t  # one full-length completion
    lengths[1] = 0 if n > 2 else lengths[1]  # one fully masked completion (e.g. truncated [D9])
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T) bool
    logp = -torch.rand(n, t, generator=g) * 3
    old = logp + torch.randn(n, t, generator=g) * 0.4  # ratios spread over the clip range
    ref = logp + torch.randn(n, t, generator=g) * 0.5
    ent = torch.rand(n, t, generator=g) * 2
    adv = torch.randn(n, generator=g)
    sel = torch.rand(n, t, generator=g) < 0.5
    cast = lambda x: x.to(dtype)  # noqa: E731
    return dict(logp=cast(logp), old=cast(old), ref=cast(ref), ent=cast(ent), adv=cast(adv), mask=mask, sel=sel)


def run_impl(b, *, loss_type, level="token", use_sel=False, normalizer="all_tokens", delta=None, beta=0.0,
             coef=0.0, n_total=None, k_total=None, k_sel_total=None, L=8):
    logp = b["logp"].clone().requires_grad_()
    ent = b["ent"].clone().requires_grad_()
    sel = b["sel"] if use_sel else None
    n_total = b["mask"].shape[0] if n_total is None else n_total
    k_total = int(b["mask"].sum()) if k_total is None else k_total
    k_sel_total = int((b["mask"] & b["sel"]).sum()) if k_sel_total is None else k_sel_total
    loss, stats = policy_loss(
        logp, b["old"], b["adv"], b["mask"], loss_type=loss_type, eps_low=EPS_LOW, eps_high=EPS_HIGH,
        delta=delta, importance_sampling_level=level, ref_logp=b["ref"], beta=beta, entropy=ent,
        entropy_coef=coef, token_mask=sel, token_normalizer=normalizer, num_sequences=n_total,
        num_tokens=k_total, num_selected_tokens=k_sel_total if use_sel else None, max_completion_length=L)
    loss.backward()
    return loss, stats, logp.grad, ent.grad


def run_reference(b, *, loss_type, level="token", use_sel=False, normalizer="all_tokens", delta=None, beta=0.0,
                  coef=0.0, L=8):
    d = {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}
    logp, ent = d["logp"].clone().requires_grad_(), d["ent"].clone().requires_grad_()
    mask, sel = d["mask"], d["sel"]
    sel_used = sel & mask if use_sel else mask
    loss = reference_policy_loss(
        logp, d["old"], d["adv"], mask, loss_type=loss_type, level=level, sel=sel if use_sel else None,
        normalizer=normalizer, delta=delta, ref=d["ref"], beta=beta, ent=ent, coef=coef, n_total=mask.shape[0],
        k_total=int(mask.sum()), k_sel_total=int(sel_used.sum()), L=L)
    loss.backward()
    return loss, logp.grad, ent.grad


CASES = [(lt, lvl, sel) for lt in ["grpo", "dapo", "dr_grpo", "bnpo"] for lvl in ["token", "sequence"]
         for sel in ["none", "all_tokens", "selected_tokens"]
         if not (lt == "dr_grpo" and sel == "selected_tokens")]  # [D7]


@pytest.mark.parametrize("loss_type,level,selection", CASES)
def test_policy_loss_matches_float64_reference(loss_type, level, selection):
    b = make_batch()
    normalizer = "selected_tokens" if selection == "selected_tokens" else "all_tokens"
    kw = dict(loss_type=loss_type, level=level, use_sel=selection != "none", normalizer=normalizer,
              beta=0.04, coef=0.01)
    loss, stats, g_logp, g_ent = run_impl(b, **kw)
    ref_loss, ref_g_logp, ref_g_ent = run_reference(b, **kw)
    tol = TOL[torch.float32]
    torch.testing.assert_close(loss.double(), ref_loss.detach(), **tol)
    torch.testing.assert_close(g_logp.double(), ref_g_logp, **tol)
    torch.testing.assert_close(g_ent.double(), ref_g_ent, **tol)
    assert stats.clip_region > 0  # the inputs do exercise the clip


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "bnpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_policy_loss_with_two_sided_clipping_matches_float64_reference(loss_type, level):
    b = make_batch(seed=1)
    b["old"] = b["logp"] - 1.0 * (b["adv"][:, None] < 0)  # ρ = e ≈ 2.72 > δ on every token with A < 0
    loss, _, g_logp, _ = run_impl(b, loss_type=loss_type, level=level, delta=1.5)
    ref_loss, ref_g_logp, _ = run_reference(b, loss_type=loss_type, level=level, delta=1.5)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), **TOL[torch.float32])
    torch.testing.assert_close(g_logp.double(), ref_g_logp, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_policy_loss_matches_float64_reference_for_other_input_dtypes(dtype):
    b = make_batch(dtype=dtype, seed=2)
    kw = dict(loss_type="grpo", level="token", use_sel=True, normalizer="all_tokens", beta=0.04, coef=0.01)
    loss, _, g_logp, _ = run_impl(b, **kw)
    ref_loss, ref_g_logp, _ = run_reference(b, **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), **TOL[dtype])
    if dtype == torch.float64:  # a bf16 leaf receives a bf16 gradient: only the loss is comparable there
        torch.testing.assert_close(g_logp, ref_g_logp, **TOL[dtype])


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_padding_columns_with_garbage_change_nothing(level):
    b = make_batch(dtype=torch.float64, seed=3)
    kw = dict(loss_type="dapo", level=level, use_sel=True, beta=0.1, coef=0.01)
    loss, stats, g_logp, g_ent = run_impl(b, **kw)
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=torch.float64)
    padded = {}
    for k, v in b.items():
        if k == "adv":
            padded[k] = v
        elif k in ("mask", "sel"):
            padded[k] = torch.cat([v, torch.full((v.shape[0], 4), k == "sel")], dim=1)  # (N, T + 4)
        else:  # garbage also inside the existing padding
            v = torch.where(b["mask"], v, float("nan"))
            padded[k] = torch.cat([v, garbage.expand(v.shape[0], 4)], dim=1)  # (N, T + 4)
    p_loss, p_stats, p_g_logp, p_g_ent = run_impl(padded, **kw)
    tol = TOL[torch.float64]
    torch.testing.assert_close(p_loss, loss, **tol)
    torch.testing.assert_close(p_g_logp[:, :8], g_logp, **tol)
    torch.testing.assert_close(p_g_ent[:, :8], g_ent, **tol)
    assert torch.equal(p_g_logp[:, 8:], torch.zeros(6, 4)) and torch.equal(p_g_ent[:, 8:], torch.zeros(6, 4))
    assert torch.equal(p_g_logp[:, :8][~b["mask"]], torch.zeros(int((~b["mask"]).sum())))
    for name in ("kl", "entropy", "ratio_mean", "clip_low", "clip_high", "clip_region"):
        torch.testing.assert_close(getattr(p_stats, name), getattr(stats, name), **tol)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "bnpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradient_at_mu_1_is_the_plain_policy_gradient(loss_type, level):
    # At ρ ≡ 1: ∇loss = −Σ_{i,t} w_{i,t} A_i ∇lp_{i,t}, w the loss_type's normaliser (GSPO: same [D4]).
    b = make_batch(dtype=torch.float64, seed=4)
    b["old"] = b["logp"].clone()
    n_total, L, mask = 10, 8, b["mask"]  # this batch is one micro-batch of a 10-sequence generation batch
    k_total = int(mask.sum()) + 17
    _, stats, g_logp, _ = run_impl(b, loss_type=loss_type, level=level, n_total=n_total, k_total=k_total, L=L)
    lengths = mask.sum(1, keepdim=True).double()  # (N, 1)
    w = {"grpo": 1 / (n_total * lengths.clamp(min=1)), "dapo": 1 / k_total, "dr_grpo": 1 / (n_total * L),
         "bnpo": mask.shape[0] / n_total / int(mask.sum())}[loss_type]
    expected = torch.where(mask, -w * b["adv"][:, None], 0.0)  # (N, T)
    torch.testing.assert_close(g_logp, expected, **TOL[torch.float64])
    assert stats.ratio_mean == 1 and stats.clip_region == 0 and stats.kl > 0


def test_kl_is_zero_at_the_start_when_policy_equals_reference():
    b = make_batch(dtype=torch.float64, seed=5)
    b["old"] = b["ref"] = b["logp"].clone()
    _, stats, _, _ = run_impl(b, loss_type="dapo", beta=0.1)
    assert stats.kl == 0 and stats.ratio_mean == 1


SPLITS = [[7], [3, 4], [2, 1, 4]]


@pytest.mark.parametrize("loss_type,normalizer", [("grpo", "all_tokens"), ("grpo", "selected_tokens"),
                                                   ("dapo", "all_tokens"), ("dapo", "selected_tokens"),
                                                   ("dr_grpo", "all_tokens")])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradient_is_invariant_to_the_micro_batch_split(loss_type, normalizer, level):
    b = make_batch(n=7, dtype=torch.float64, seed=6)
    totals = dict(n_total=7, k_total=int(b["mask"].sum()), k_sel_total=int((b["mask"] & b["sel"]).sum()))
    kw = dict(loss_type=loss_type, level=level, use_sel=True, normalizer=normalizer, beta=0.04, coef=0.01)
    results = []
    for sizes in SPLITS:
        loss_sum, g_logp, g_ent, start = 0.0, [], [], 0
        for size in sizes:
            part = {k: v[start:start + size] for k, v in b.items()}
            loss, _, gl, ge = run_impl(part, **kw, **totals)
            loss_sum, start = loss_sum + loss, start + size
            g_logp.append(gl)
            g_ent.append(ge)
        results.append((loss_sum, torch.cat(g_logp), torch.cat(g_ent)))
    for loss_sum, g_logp, g_ent in results[1:]:
        torch.testing.assert_close(loss_sum, results[0][0], **TOL[torch.float64])
        torch.testing.assert_close(g_logp, results[0][1], **TOL[torch.float64])
        torch.testing.assert_close(g_ent, results[0][2], **TOL[torch.float64])


def test_bnpo_is_the_local_token_mean_and_depends_on_the_split():
    b = make_batch(n=4, dtype=torch.float64, seed=7)
    whole, _, _, _ = run_impl(b, loss_type="bnpo")
    as_dapo, _, _, _ = run_impl(b, loss_type="dapo")
    torch.testing.assert_close(whole, as_dapo, **TOL[torch.float64])  # one micro-batch: bnpo = dapo
    halves = [{k: v[s] for k, v in b.items()} for s in (slice(0, 2), slice(2, 4))]
    shares = [run_impl(h, loss_type="bnpo", n_total=4)[0] for h in halves]
    local_means = [run_impl(h, loss_type="bnpo", n_total=2)[0] for h in halves]  # each alone = its token mean
    average_of_local_means = (local_means[0] + local_means[1]) / 2
    torch.testing.assert_close(shares[0] + shares[1], average_of_local_means, **TOL[torch.float64])
    assert not torch.isclose(shares[0] + shares[1], whole)  # [D2]: not split-invariant


def test_clip_fractions_and_losses_on_a_hand_built_example():
    # eps_low = 0.2, eps_high = 0.28 -> clip range [0.8, 1.28]; one padding column; δ = 1.4 in the second run.
    # seq 0, A = +1, ρ = [1.5, 1.0, 0.5, pad]: ℓ = −min(ρA, clip(ρ)A) = [−1.28 (high-clipped), −1.0, −0.5]
    # seq 1, A = −1, ρ = [0.5, 1.5, 1.0, 1.0]: ℓ = [0.8 (low-clipped), 1.5, 1.0, 1.0]
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5, 1.0], [0.5, 1.5, 1.0, 1.0]], dtype=torch.float64))
    old = torch.zeros(2, 4, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])

    def run(loss_type, delta=None):
        lp = logp.clone().requires_grad_()
        loss, stats = policy_loss(lp, old, adv, mask, loss_type=loss_type, eps_low=0.2, eps_high=0.28,
                                  delta=delta, num_sequences=2, num_tokens=7, max_completion_length=5)
        loss.backward()
        return loss.item(), stats, lp.grad

    # sums: seq 0 = −2.78, seq 1 = 4.3, all 7 tokens = 1.52
    # grpo = (−2.78/3 + 4.3/4) / 2 = (−0.9266667 + 1.075) / 2 = 0.0741667; dapo = 1.52/7 = 0.2171429
    # dr_grpo = 1.52 / (2 · 5) = 0.152; bnpo (one micro-batch) = dapo
    hand = [("grpo", 0.0741667), ("dapo", 0.2171429), ("dr_grpo", 0.152), ("bnpo", 0.2171429)]
    for loss_type, expected in hand:
        assert math.isclose(run(loss_type)[0], expected, abs_tol=1e-7), loss_type
    _, stats, grad = run("dapo")
    # low: seq 1 token 0 only (seq 0's ρ = 0.5 has A > 0); high: seq 0 token 0 only (seq 1's 1.5 has A < 0)
    fractions = torch.stack([stats.clip_low, stats.clip_high, stats.clip_region]).double()
    expected_fractions = torch.tensor([1 / 7, 1 / 7, 2 / 7], dtype=torch.float64)
    torch.testing.assert_close(fractions, expected_fractions, **TOL[torch.float32])  # counted in fp32
    expected_ratio_mean = (1.5 + 1 + 0.5 + 0.5 + 1.5 + 1 + 1) / 7
    torch.testing.assert_close(stats.ratio_mean.item(), expected_ratio_mean, **TOL[torch.float64])
    # ∂ℓ/∂lp = −A·ρ where the unclipped branch is active, 0 on clipped tokens and padding; dapo divides by 7
    expected_grad = torch.tensor([[0.0, -1.0, -0.5, 0.0], [0.0, 1.5, 1.0, 1.0]], dtype=torch.float64) / 7
    torch.testing.assert_close(grad, expected_grad, **TOL[torch.float64])
    # δ = 1.4 caps seq 1's ρ = 1.5 (A < 0): ℓ = −min(1.4·(−1), 1.28·(−1)) = 1.4 and its gradient vanishes
    # dapo = (1.52 − 1.5 + 1.4) / 7 = 1.42 / 7 = 0.2028571
    loss, _, grad = run("dapo", delta=1.4)
    assert math.isclose(loss, 0.2028571, abs_tol=1e-7) and grad[1, 1] == 0


def test_sequence_ratio_matches_float64_reference_and_gspo_gradient():
    b = make_batch(dtype=torch.float64, seed=8)
    logp = b["logp"].clone().requires_grad_()
    s = sequence_ratio(logp, b["old"], b["mask"])  # (N, T)
    for i in range(6):
        toks = [t for t in range(8) if b["mask"][i, t]]
        log_ratios = [float(b["logp"][i, t] - b["old"][i, t]) for t in toks]
        expected = math.exp(sum(log_ratios) / len(toks)) if toks else 1.0
        assert torch.allclose(s[i], torch.full((8,), expected, dtype=torch.float64), **TOL[torch.float64])
    s[:, 0].sum().backward()  # ∂s_i/∂lp_{i,t} = s_i / |o_i| on completion tokens (GSPO §4.2)
    lengths = b["mask"].sum(1, keepdim=True).clamp(min=1)
    expected_grad = torch.where(b["mask"], s[:, :1].detach() / lengths, 0.0)
    torch.testing.assert_close(logp.grad, expected_grad, **TOL[torch.float64])


def test_token_ratio_and_surrogate_hand_values():
    # ρ = e^{log 2 − 0} = 2; A = 0.5: −min(2·0.5, 1.28·0.5) = −0.64
    ratio = token_ratio(torch.tensor([[math.log(2.0)]]), torch.tensor([[0.0]]))
    torch.testing.assert_close(ratio, torch.tensor([[2.0]]))
    got = clipped_surrogate(ratio, torch.tensor([[0.5]]), eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(got, torch.tensor([[-0.64]]))


def test_inconsistent_options_are_rejected():
    b = make_batch()
    with pytest.raises(ValueError, match="selected_tokens"):
        run_impl(b, loss_type="dr_grpo", use_sel=True, normalizer="selected_tokens")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(b["logp"], b["old"], b["adv"], b["mask"], loss_type="grpo", eps_low=0.2, eps_high=0.2,
                    beta=0.1, num_sequences=6, num_tokens=10, max_completion_length=8)
    with pytest.raises(ValueError, match="loss_type"):
        run_impl(b, loss_type="ppo")
    with pytest.raises(AssertionError, match="delta"):
        run_impl(b, loss_type="grpo", delta=1.1)
