"""kernels.top_m_entropy_mean and kernels.top_k_entropy_mask: exact counts, ties, ranks, large N."""
import math
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TOL
from kernels import top_k_entropy_mask, top_m_entropy_mean


def reference_top_m(entropy, mask, top_m):
    """Per row, longhand: sort the scored values (stable, descending) and average the first m."""
    means, chosen = [], torch.zeros_like(mask)
    for b in range(entropy.shape[0]):
        pos = [t for t in range(entropy.shape[1]) if mask[b, t]]
        n = len(pos)
        m = (max(1, math.floor(Fraction(top_m) * n)) if top_m < 1 else min(int(top_m), n)) if n else 0
        ranked = sorted(pos, key=lambda t: -entropy[b, t].item())  # Python's sort is stable: ties by position
        chosen[b, ranked[:m]] = True
        means.append(sum(entropy[b, t].item() for t in ranked[:m]) / m if m else 0.0)
    return torch.tensor(means, dtype=torch.float64), chosen


def reference_top_k(entropy, mask, rho):
    flat = [(entropy.flatten()[i].item(), i) for i in range(entropy.numel()) if mask.flatten()[i]]
    k = math.ceil(Fraction(rho).limit_denominator(10**6) * len(flat))
    chosen = torch.zeros(entropy.numel(), dtype=torch.bool)
    for _, i in sorted(flat, key=lambda vi: -vi[0])[:k]:  # stable: earlier position wins a tie
        chosen[i] = True
    return chosen.reshape(mask.shape)


def test_hand_worked_top_m_fraction_and_count():
    # scored entropies [0.5, 2.0, 1.0, 3.0] (the 5th position is padding, n = 4)
    # top_m = 0.5 -> m = max(1, ⌊0.5·4⌋) = 2 -> {3.0, 2.0}, mean 2.5
    # top_m = 3   -> m = min(3, 4) = 3     -> {3.0, 2.0, 1.0}, mean 2.0
    # top_m = 0.1 -> m = max(1, ⌊0.4⌋) = 1 -> {3.0}, mean 3.0
    entropy = torch.tensor([[0.5, 2.0, 1.0, 3.0, 9.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    for top_m, mean, picked in [(0.5, 2.5, [1, 3]), (3, 2.0, [1, 2, 3]), (0.1, 3.0, [3])]:
        got, selected = top_m_entropy_mean(entropy, mask, top_m=top_m)
        torch.testing.assert_close(got, torch.tensor([mean]), **TOL[torch.float32])
        assert selected[0].nonzero().flatten().tolist() == picked


@pytest.mark.parametrize("top_m", [0.1, 0.29, 0.5, 1, 3, 50])
def test_top_m_matches_longhand_reference_with_ties_and_empty_rows(top_m):
    g = torch.Generator().manual_seed(0)
    entropy = (torch.rand(6, 40, generator=g) * 4).round() / 2  # few distinct values: many ties
    mask = torch.rand(6, 40, generator=g) < 0.7
    mask[2] = False  # a row with nothing scored
    mask[3, :] = False
    mask[3, 5] = True  # a row with one scored token
    mean, selected = top_m_entropy_mean(entropy, mask, top_m=top_m)
    ref_mean, ref_selected = reference_top_m(entropy, mask, top_m)
    torch.testing.assert_close(mean.double(), ref_mean, **TOL[torch.float32])
    assert torch.equal(selected, ref_selected)
    assert not (selected & ~mask).any() and mean[2] == 0 and not selected[2].any()


def test_top_m_mean_gradient_is_one_over_m_on_selected_tokens():
    entropy = torch.tensor([[0.5, 2.0, 1.0, 3.0]], requires_grad=True)
    mean, selected = top_m_entropy_mean(entropy, torch.ones(1, 4, dtype=torch.bool), top_m=2)
    mean.sum().backward()
    assert torch.equal(entropy.grad, selected.float() / 2)


def test_top_m_rejects_fractional_counts():
    with pytest.raises(ValueError, match="whole count"):
        top_m_entropy_mean(torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool), top_m=1.5)


@pytest.mark.parametrize("rho", [0.2, 0.1, 0.5, 1.0, 1e-3])
def test_top_k_selects_exactly_ceil_rho_n_and_matches_longhand_reference(rho):
    g = torch.Generator().manual_seed(1)
    entropy = (torch.rand(7, 30, generator=g) * 8).round() / 4  # ties
    mask = torch.rand(7, 30, generator=g) < 0.6
    selected = top_k_entropy_mask(entropy, mask, rho=rho)
    k = math.ceil(Fraction(rho).limit_denominator(10**6) * int(mask.sum()))
    assert int(selected.sum()) == k and not (selected & ~mask).any()
    assert torch.equal(selected, reference_top_k(entropy, mask, rho))
    if 0 < k < int(mask.sum()):
        assert entropy[selected].min() >= entropy[mask & ~selected].max()


def test_rho_and_top_m_are_read_exactly_so_seven_percent_of_one_hundred_is_seven():
    entropy, mask = torch.rand(1, 100), torch.ones(1, 100, dtype=torch.bool)
    assert math.ceil(0.07 * 100) == 8 and int(top_k_entropy_mask(entropy, mask, rho=0.07).sum()) == 7
    assert math.floor(0.29 * 100) == 28 and int(top_m_entropy_mean(entropy, mask, top_m=0.29)[1].sum()) == 29


def test_top_k_is_exact_beyond_two_to_the_24_tokens():
    n = 2**24 + 5  # torch.quantile refuses inputs this large
    entropy = torch.rand(n, generator=torch.Generator().manual_seed(2))
    entropy[-3:] = 2.0  # three tied maxima at the very end
    selected = top_k_entropy_mask(entropy, torch.ones(n, dtype=torch.bool), rho=0.25)
    k = math.ceil(n / 4)
    assert int(selected.sum()) == k and selected[-3:].all()
    assert entropy[selected].min() >= entropy[~selected].max()


def _rank_worker(rank, world, init_file, rows, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        entropy, mask = torch.load(f"{out_dir}/batch.pt")
        mine = slice(*rows[rank])
        T = 20 + 7 * rank  # ranks pad to different lengths: padding must not matter
        local_e, local_m = entropy[mine, :T], mask[mine, :T]
        torch.save(top_k_entropy_mask(local_e, local_m, rho=0.3), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_top_k_across_two_gloo_ranks_equals_single_process_selection(tmp_path):
    g = torch.Generator().manual_seed(3)
    entropy = (torch.rand(9, 27, generator=g) * 6).round() / 3  # ties across ranks
    mask = torch.rand(9, 27, generator=g) < 0.7
    mask[:5, 20:] = False  # rank 0 holds rows 0-4 with T = 20, rank 1 rows 5-8 with T = 27
    torch.save((entropy, mask), tmp_path / "batch.pt")
    rows = [(0, 5), (5, 9)]
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), rows, str(tmp_path)), nprocs=2, join=True)
    union = torch.zeros_like(mask)
    union[0:5, :20] = torch.load(tmp_path / "rank0.pt")
    union[5:9, :27] = torch.load(tmp_path / "rank1.pt")
    single = top_k_entropy_mask(entropy, mask, rho=0.3)
    assert int(single.sum()) == math.ceil(0.3 * int(mask.sum()))
    assert torch.equal(union, single)
