"""Eq. 2 (sega.loss): float64 references for the advantages and the loss, and their properties."""
import math

import pytest
import torch

try:  # tests/ is a package in this tree (tests/__init__.py); plain rootdir import otherwise
    from tests.conftest import TOL
except ImportError:
    from conftest import TOL
from sega.filtering import map_rewards
from sega.loss import sega_advantages, sega_loss

F64 = TOL[torch.float64]


# ----------------------------------------------------------------------------- longhand references
def ref_advantages(scores, valid, mapping, adv_norm, tau=1.0):
    """Eq. 2 advantages for one prompt, lists of floats in, list out (0 for invalid candidates)."""
    idx = [i for i, v in enumerate(valid) if v]
    if mapping == "identity":
        r = {i: scores[i] for i in idx}
    else:
        z = sum(math.exp(scores[j] / tau) for j in idx)
        r = {i: math.exp(scores[i] / tau) / z for i in idx}
    if len(idx) < 2 or len(set(r.values())) == 1:
        return [0.0] * len(scores)
    mean = sum(r.values()) / len(idx)
    a = {i: r[i] - mean for i in idx}
    if adv_norm == "zscore":
        std = math.sqrt(sum(x * x for x in a.values()) / (len(idx) - 1))
        if std > 1e-6:
            a = {i: x / (std + 1e-8) for i, x in a.items()}
    return [a.get(i, 0.0) for i in range(len(scores))]


def ref_loss(logp, mask, adv, valid, length_normalize):
    """L = (1/B) Σ_b −(1/k_valid) Σ_{i valid} A_i · w_i Σ_t m lp, float64 lists/tensors, longhand loops."""
    B, k = len(adv), len(adv[0])
    total = 0.0
    for b in range(B):
        k_valid = sum(valid[b])
        s = 0.0
        for i in range(k):
            if not valid[b][i]:
                continue
            row = b * k + i
            toks = [logp[row][t] for t in range(len(mask[row])) if mask[row][t]]
            seq = sum(toks) / max(len(toks), 1) if length_normalize else sum(toks)
            s += adv[b][i] * seq
        total += -s / max(k_valid, 1)
    return total / B


def make_batch(B=3, k=4, T=7, dtype=torch.float64):
    lengths = torch.randint(1, T + 1, (B * k,))
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (N, T)
    logp = -torch.rand(B * k, T, dtype=dtype) * 3
    valid = torch.ones(B, k, dtype=torch.bool)
    valid[1, 2] = False
    valid[2, :3] = False  # a prompt with a single valid candidate
    return logp, mask, valid


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize("mapping", ["identity", "softmax"])
@pytest.mark.parametrize("adv_norm", ["center", "zscore"])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_sega_loss_and_gradient_match_float64_reference(mapping, adv_norm, length_normalize):
    B, k = 3, 4
    logp, mask, valid = make_batch(B, k)
    scores = torch.randn(B, k, dtype=torch.float64)
    adv = sega_advantages(map_rewards(scores, valid, mapping=mapping, tau=0.5), adv_norm=adv_norm)
    expected_adv = [ref_advantages(scores[b].tolist(), valid[b].tolist(), mapping, adv_norm, tau=0.5)
                    for b in range(B)]
    torch.testing.assert_close(adv, torch.tensor(expected_adv, dtype=torch.float64), **F64)

    logp.requires_grad_(True)
    loss, stats = sega_loss(logp, adv, mask, valid, length_normalize=length_normalize)
    loss.backward()
    ref_lp = logp.detach().clone().requires_grad_(True)
    expected = ref_loss(ref_lp, mask.tolist(), expected_adv, valid.tolist(), length_normalize)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), **F64)
    torch.testing.assert_close(logp.grad, ref_lp.grad, **F64)
    assert stats.kl is None and stats.ratio_mean == 1.0 and stats.clip_fraction == 0.0


def test_hand_worked_sega_loss():
    # one prompt, k = 2, identity, center: S = [1, 3] → mean 2 → A = [−1, +1]
    # Σ_t lp: candidate 0 = −0.5 − 1.5 = −2.0, candidate 1 = −4.0 (its last token is padding)
    # L = −(1/2)·(−1·−2.0 + 1·−4.0) = −(1/2)·(2 − 4) = 1.0
    # length-normalised: token means −1.0 and −4.0 → L = −(1/2)·(1 − 4) = 1.5
    logp = torch.tensor([[-0.5, -1.5], [-4.0, float("nan")]])
    mask = torch.tensor([[True, True], [True, False]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    adv = sega_advantages(map_rewards(torch.tensor([[1.0, 3.0]]), valid))
    assert adv.tolist() == [[-1.0, 1.0]]
    assert sega_loss(logp, adv, mask, valid)[0].item() == pytest.approx(1.0)
    assert sega_loss(logp, adv, mask, valid, length_normalize=True)[0].item() == pytest.approx(1.5)


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("adv_norm", ["center", "zscore"])
@pytest.mark.parametrize("mapping", ["identity", "softmax"])
def test_advantages_sum_to_zero_over_valid_candidates(adv_norm, mapping):
    scores = torch.randn(6, 5)
    valid = torch.rand(6, 5) > 0.2
    adv = sega_advantages(map_rewards(scores, valid, mapping=mapping), adv_norm=adv_norm)
    assert (adv[~valid] == 0).all()
    torch.testing.assert_close(adv.sum(1), torch.zeros(6), **TOL[torch.float32])


@pytest.mark.parametrize("adv_norm", ["center", "zscore"])
@pytest.mark.parametrize("mapping", ["identity", "softmax"])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_equal_scores_give_exactly_zero_gradient(adv_norm, mapping, length_normalize):
    logp, mask, valid = make_batch(dtype=torch.float32)
    scores = torch.full((3, 4), 0.1)  # 0.1 is not exactly representable: the mean must not leak a residue
    adv = sega_advantages(map_rewards(scores, valid, mapping=mapping), adv_norm=adv_norm)
    logp.requires_grad_(True)
    loss, _ = sega_loss(logp, adv, mask, valid, length_normalize=length_normalize)
    loss.backward()
    assert (adv == 0).all() and (logp.grad == 0).all() and loss.item() == 0.0


def test_doubling_scores_leaves_zscore_advantages_unchanged():
    scores = torch.randn(4, 6, dtype=torch.float64)
    valid = torch.ones(4, 6, dtype=torch.bool)
    once = sega_advantages(map_rewards(scores, valid), adv_norm="zscore")
    twice = sega_advantages(map_rewards(2 * scores, valid), adv_norm="zscore")
    torch.testing.assert_close(twice, once, atol=1e-7, rtol=1e-7)  # the only difference is the +1e-8 on std
    centred = sega_advantages(map_rewards(2 * scores, valid), adv_norm="center")
    torch.testing.assert_close(centred, 2 * sega_advantages(map_rewards(scores, valid)), **F64)


def test_zscore_does_not_divide_a_tiny_spread():
    scores = torch.tensor([[1.0, 1.0 + 1e-7, 1.0 - 1e-7]], dtype=torch.float64)  # std 1e-7 ≤ 1e-6
    torch.testing.assert_close(sega_advantages(scores, adv_norm="zscore"), sega_advantages(scores), **F64)


def test_padding_post_eos_and_invalid_candidates_are_never_read():
    logp, mask, valid = make_batch()
    adv = sega_advantages(map_rewards(torch.randn(3, 4, dtype=torch.float64), valid))
    unread = ~mask | ~valid.reshape(-1, 1)  # (N, T)
    dirty = logp.masked_fill(unread, float("nan")).requires_grad_(True)
    clean = logp.masked_fill(unread, 0.0).requires_grad_(True)
    kw = dict(old_logp=logp.masked_fill(unread, float("inf")), ref_logp=logp.masked_fill(unread, -float("inf")),
              beta=0.1)
    loss_d, _ = sega_loss(dirty, adv, mask, valid, **kw)
    loss_c, _ = sega_loss(clean, adv, mask, valid, **kw)
    loss_d.backward()
    loss_c.backward()
    assert torch.isfinite(loss_d) and loss_d.item() == loss_c.item()
    assert torch.equal(dirty.grad, clean.grad) and (dirty.grad[unread] == 0).all()


# ----------------------------------------------------------------------------- options
def test_clip_is_inactive_when_samples_are_fresh():
    logp, mask, valid = make_batch()
    adv = sega_advantages(map_rewards(torch.randn(3, 4, dtype=torch.float64), valid))
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    sega_loss(a, adv, mask, valid)[0].backward()
    sega_loss(b, adv, mask, valid, old_logp=logp.detach())[0].backward()
    torch.testing.assert_close(a.grad, b.grad, **F64)  # at ρ = 1 the clipped surrogate has −A·∇lp


def test_clipped_loss_with_kl_matches_float64_reference():
    B, k = 3, 4
    logp, mask, valid = make_batch(B, k)
    old = logp + torch.randn_like(logp) * 0.4  # reused samples: ratios well outside [0.8, 1.2]
    ref = logp + torch.randn_like(logp) * 0.3
    adv = sega_advantages(map_rewards(torch.randn(B, k, dtype=torch.float64), valid), adv_norm="zscore")
    loss, stats = sega_loss(logp, adv, mask, valid, old_logp=old, eps_low=0.2, eps_high=0.28, ref_logp=ref,
                            beta=0.05)
    total, clipped, count = 0.0, 0, 0
    for b in range(B):
        s = 0.0
        for i in range(k):
            row = b * k + i
            for t in range(logp.shape[1]):
                if not (valid[b, i] and mask[row, t]):
                    continue
                a, lp = adv[b, i].item(), logp[row, t].item()
                rho = math.exp(lp - old[row, t].item())
                x = ref[row, t].item() - lp
                s += -min(rho * a, min(max(rho, 0.8), 1.28) * a) + 0.05 * (math.exp(x) - x - 1)
                clipped += (rho < 0.8 and a < 0) or (rho > 1.28 and a > 0)
                count += 1
        total += s / valid[b].sum().item()
    assert loss.item() == pytest.approx(total / B, rel=1e-10)
    assert stats.clip_fraction.item() == pytest.approx(clipped / count) and clipped > 0


def test_micro_batch_losses_sum_to_the_full_batch_loss():
    B, k = 4, 3
    lengths = torch.randint(1, 6, (B * k,))
    mask = torch.arange(5)[None, :] < lengths[:, None]
    logp = -torch.rand(B * k, 5, dtype=torch.float64)
    valid = torch.ones(B, k, dtype=torch.bool)
    adv = sega_advantages(map_rewards(torch.randn(B, k, dtype=torch.float64), valid))
    full, _ = sega_loss(logp, adv, mask, valid)
    halves = [sega_loss(logp[h * 6:(h + 1) * 6], adv[h * 2:(h + 1) * 2], mask[h * 6:(h + 1) * 6],
                        valid[h * 2:(h + 1) * 2], num_prompts=B)[0] for h in range(2)]
    torch.testing.assert_close(halves[0] + halves[1], full, **F64)
