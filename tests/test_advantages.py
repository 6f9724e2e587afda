"""grpo.advantages against float64 references written longhand (Python floats, no torch reductions)."""
import math

import pytest
import torch
from conftest import TOL

from grpo.advantages import group_advantages, overlong_penalty, weighted_rewards, zero_std_groups


def reference_advantages(rewards, scale_rewards, eps=1e-4):
    """Longhand float64: per-group mean, unbiased std (group or batch), NaN = absent, zero-variance -> 0."""
    rows = [[float(r) for r in row] for row in rewards.double()]
    valid_all = [r for row in rows for r in row if not math.isnan(r)]
    mu_b = sum(valid_all) / len(valid_all)
    std_b = math.sqrt(sum((r - mu_b) ** 2 for r in valid_all) / (len(valid_all) - 1))
    out = []
    for row in rows:
        valid = [r for r in row if not math.isnan(r)]
        if len(valid) < 2 or max(valid) == min(valid):
            out.append([0.0] * len(row))
            continue
        mu = sum(valid) / len(valid)
        std_g = math.sqrt(sum((r - mu) ** 2 for r in valid) / (len(valid) - 1))
        scale = {"group": std_g + eps, "batch": std_b + eps, "none": 1.0}[scale_rewards]
        out.append([0.0 if math.isnan(r) else (r - mu) / scale for r in row])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 2), (3, 5), (4, 8)])
def test_group_advantages_match_float64_reference(scale_rewards, dtype, shape):
    rewards = (torch.randn(shape) * 3).to(dtype)
    rewards[0] = rewards[0, 0]  # one zero-variance group
    got = group_advantages(rewards, scale_rewards=scale_rewards)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), reference_advantages(rewards, scale_rewards), **TOL[dtype])


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_sum_to_zero_per_group(scale_rewards):
    rewards = torch.rand(6, 7)
    sums = group_advantages(rewards, scale_rewards=scale_rewards).sum(dim=1)
    torch.testing.assert_close(sums, torch.zeros(6), **TOL[torch.float32])


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_are_exactly_zero_when_group_rewards_are_equal(scale_rewards):
    # In fp32, 7 copies of 0.7 have a mean that is not 0.7 (r − mean leaves 6e-8): only the explicit
    # zero-variance rule gives exact zeros.
    rewards = torch.tensor([[0.7] * 7, [0.1] * 7, [0.0, 1.0, 0.25, 0.0, 0.0, 0.0, 0.0]])
    assert (rewards[0] - rewards[0].mean()).abs().max() > 0  # the trap this test is about
    got = group_advantages(rewards, scale_rewards=scale_rewards)
    assert torch.equal(got[:2], torch.zeros(2, 7))
    assert (got[2] != 0).all()


def test_group_advantages_hand_worked_example():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    # group 0: mean = 2/4 = 0.5; centred = [+0.5, -0.5, -0.5, +0.5]
    # unbiased var = 4 * 0.25 / (4 - 1) = 1/3; std = 0.5773503; A = ±0.5 / (0.5773503 + 1e-4) = ±0.8658754
    # group 1: all equal -> exactly 0
    expected = torch.tensor([[0.8658754, -0.8658754, -0.8658754, 0.8658754], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(rewards, scale_rewards="group"), expected, **TOL[torch.float32])
    # "none" (Dr. GRPO): only centred
    expected_none = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(group_advantages(rewards, scale_rewards="none"), expected_none)
    # "batch": std of all 8 rewards: mean = 14/8 = 1.75; Σ(r-1.75)^2 = 2·0.5625 + 2·3.0625 + 4·1.5625 = 13.5
    # var = 13.5 / 7 = 1.9285714; std = 1.3887301; A = ±0.5 / (1.3887301 + 1e-4) = ±0.3600152
    expected_batch = torch.tensor([[0.3600152, -0.3600152, -0.3600152, 0.3600152], [0.0, 0.0, 0.0, 0.0]])
    got = group_advantages(rewards, scale_rewards="batch")
    torch.testing.assert_close(got, expected_batch, **TOL[torch.float32])


def test_unscorable_completions_are_left_out_of_the_group_and_get_zero_advantage():
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan, 0.0, 2.0], [nan, 5.0, nan, nan], [nan, nan, nan, nan]])
    got = group_advantages(rewards, scale_rewards="group")
    # group 0 behaves as the 3-reward group [1, 0, 2] with a 0 in the NaN slot
    alone = group_advantages(torch.tensor([[1.0, 0.0, 2.0]]), scale_rewards="group")[0]
    torch.testing.assert_close(got[0], torch.stack([alone[0], torch.tensor(0.0), alone[1], alone[2]]))
    assert torch.equal(got[1:], torch.zeros(2, 4))  # < 2 valid rewards: no signal
    torch.testing.assert_close(got.double(), reference_advantages(rewards, "group"), **TOL[torch.float32])


def test_weighted_rewards_skip_none_and_mark_unscorable_completions():
    nan = float("nan")
    per_function = torch.tensor([[[1.0, 2.0], [nan, 2.0], [nan, nan]]])  # (B=1, G=3, F=2)
    # weights [0.5, 3]: 0.5·1 + 3·2 = 6.5; NaN skipped: 3·2 = 6; all NaN: unscorable -> NaN
    got = weighted_rewards(per_function, [0.5, 3.0])
    assert got.shape == (1, 3)
    torch.testing.assert_close(got[0, :2], torch.tensor([6.5, 6.0]))
    assert got[0, 2].isnan()


def test_weighted_rewards_match_float64_reference():
    per_function = torch.randn(3, 4, 5)
    per_function[per_function > 1.2] = float("nan")
    weights = torch.rand(5)
    expected = torch.tensor([[sum(float(w) * float(r) for w, r in zip(weights, per_function[b, g])
                                  if not math.isnan(float(r))) for g in range(4)] for b in range(3)],
                            dtype=torch.float64)
    got = weighted_rewards(per_function, weights).double()
    torch.testing.assert_close(got, expected, **TOL[torch.float32])


def test_zero_std_groups_hand_worked_example():
    nan = float("nan")
    rewards = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0 + 1e-6], [nan, 2.0, 2.0], [nan, nan, 4.0]])
    # exact equality: the 1e-6 group has signal; NaNs are ignored; a single valid reward has no spread
    assert zero_std_groups(rewards).tolist() == [True, False, True, True]


def reference_overlong(length, max_len, cache_len):
    if length <= max_len - cache_len:
        return 0.0
    if length <= max_len:
        return ((max_len - cache_len) - length) / cache_len
    return -1.0


def test_overlong_penalty_matches_reference_and_hand_worked_example():
    lengths = torch.arange(0, 30)
    got = overlong_penalty(lengths, max_len=20, cache_len=4)
    expected = torch.tensor([reference_overlong(int(n), 20, 4) for n in lengths], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, **TOL[torch.float32])
    # L_max = 20, L_cache = 4: the ramp starts at 16.
    # L = 16 -> 0; 17 -> (16 - 17)/4 = -0.25; 18 -> -0.5; 20 -> (16 - 20)/4 = -1; 21 -> -1 (beyond L_max)
    assert got[[10, 16, 17, 18, 20, 21]].tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]


def test_overlong_penalty_is_nonincreasing_and_in_minus_one_to_zero():
    got = overlong_penalty(torch.linspace(0, 600, 2001), max_len=512, cache_len=128)
    assert (got <= 0).all() and (got >= -1).all()
    assert (got[1:] <= got[:-1]).all()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.rand(2, 3), scale_rewards="grup")
    with pytest.raises(AssertionError, match="G >= 2"):
        group_advantages(torch.rand(2, 1))
    with pytest.raises(AssertionError, match="cache_len"):
        overlong_penalty(torch.tensor([3]), max_len=4, cache_len=5)
