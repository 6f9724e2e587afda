"""Cognitive filtering (sega.filtering): reward mappings, low-outlier dropping, (top, bottom) pairs."""
import math

import pytest
import torch

from sega.filtering import (REWARD_MAPPINGS, drop_low_outliers, identity_reward, map_rewards, softmax_reward,
                            top_bottom_pairs)


def test_softmax_reward_matches_float64_reference_over_valid_candidates():
    scores = torch.randn(5, 4, dtype=torch.float64) * 3
    valid = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 0, 1]], dtype=torch.bool)
    tau = 0.7
    got = softmax_reward(scores, valid, tau=tau)
    for b in range(5):
        idx = [i for i in range(4) if valid[b, i]]
        z = sum(math.exp(scores[b, j].item() / tau) for j in idx)
        for i in range(4):
            if valid[b, i]:
                assert got[b, i].item() == pytest.approx(math.exp(scores[b, i].item() / tau) / z, rel=1e-12)
            else:
                assert math.isnan(got[b, i].item())
    torch.testing.assert_close(got.nansum(1), torch.ones(5, dtype=torch.float64))


def test_softmax_reward_does_not_overflow_for_large_scores():
    got = softmax_reward(torch.tensor([[1000.0, 999.0]]), torch.ones(1, 2, dtype=torch.bool), tau=0.01)
    assert torch.isfinite(got).all() and got[0, 0] == pytest.approx(1.0)


def test_identity_reward_is_the_score_and_nan_for_invalid_candidates():
    scores = torch.tensor([[0.5, -1.0, 2.0]])
    got = identity_reward(scores, torch.tensor([[True, False, True]]))
    assert got[0, 0] == 0.5 and math.isnan(got[0, 1]) and got[0, 2] == 2.0
    assert set(REWARD_MAPPINGS) == {"identity", "softmax"}
    with pytest.raises(ValueError, match="identity"):
        map_rewards(scores, torch.ones(1, 3, dtype=torch.bool), mapping="rank")


def test_drop_low_outliers_removes_only_scores_below_the_tukey_fence():
    # group 0: [1.0, 1.1, 0.9, -5.0]: Q1 = −0.575, Q3 = 1.025, IQR = 1.6, fence = −0.575 − 2.4 = −2.975
    #          → −5.0 is dropped.
    # group 1: [1, 2, 3, 4]: Q1 = 1.75, Q3 = 3.25, fence = 1.75 − 2.25 = −0.5 → nothing dropped.
    # group 2: two valid candidates never lose one; the invalid one stays invalid.
    scores = torch.tensor([[1.0, 1.1, 0.9, -5.0], [1.0, 2.0, 3.0, 4.0], [0.0, -100.0, 5.0, 7.0]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.bool)
    keep = drop_low_outliers(scores, valid)
    assert keep.tolist() == [[True, True, True, False], [True, True, True, True], [True, False, True, False]]


def test_top_bottom_pairs_pick_the_extremes_of_valid_candidates_only():
    scores = torch.tensor([[0.1, 0.9, -0.3, 5.0], [2.0, 2.0, 2.0, 2.0], [1.0, 3.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    pairs = top_bottom_pairs(scores, valid)
    assert pairs.top[0] == 1 and pairs.bottom[0] == 2  # 5.0 is invalid
    assert pairs.has_pair.tolist() == [True, False, False]  # all equal; a single valid candidate
    assert pairs.keep(4).tolist() == [[False, True, True, False], [False] * 4, [False] * 4]
