"""Token-balanced data-parallel shards (issue 21): ranks get about the same tokens, not the
same count, so one rank holding every 32k-token sample does not gate the step."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swe_aem.train.batch import balanced_shards


def _tokens(shards: list[list[int]], lengths: list[int]) -> list[int]:
    return [sum(lengths[i] for i in s) for s in shards]


def _round_robin(n: int, world: int) -> list[list[int]]:
    return [list(range(r, n, world)) for r in range(world)]


def test_skewed_lengths_balance_where_round_robin_does_not():
    # DeepSWE-like: the long trajectories happen to sit at even positions
    lengths = [32_768, 900, 30_000, 1_200, 28_000, 700, 31_000, 1_000]
    rr = _tokens(_round_robin(len(lengths), 2), lengths)
    bal = _tokens(balanced_shards(lengths, 2), lengths)
    assert rr == [121_768, 3_800]
    assert max(bal) - min(bal) <= max(lengths)
    assert max(bal) <= sum(lengths) / 2 + max(lengths) / 2  # greedy longest-first's bound
    assert max(bal) < 0.6 * max(rr)
    assert balanced_shards(lengths, 2) == [[0, 1, 3, 4], [2, 5, 6, 7]]  # 62,868 and 62,700


@given(st.lists(st.integers(1, 40_000), max_size=64), st.integers(1, 9))
def test_every_sample_once_balanced_and_deterministic(lengths, world):
    shards = balanced_shards(lengths, world)
    assert len(shards) == world
    assert sorted(i for s in shards for i in s) == list(range(len(lengths)))
    assert all(s == sorted(s) for s in shards)
    assert shards == balanced_shards(list(lengths), world)  # every rank computes the same split
    tok = _tokens(shards, lengths)
    if lengths:
        # no rank is more than one sample above another, nor above the mean plus (1 - 1/world)
        # of the longest sample (the round-robin split can be off by half the batch)
        assert max(tok) - min(tok) <= max(lengths)
        assert max(tok) <= sum(lengths) / world + max(lengths) * (1 - 1 / world) + 1e-9


def test_ties_go_to_the_lowest_rank_and_equal_lengths_deal_out_like_round_robin():
    assert balanced_shards([5, 5, 5, 5, 5], 2) == [[0, 2, 4], [1, 3]]
    assert balanced_shards([], 3) == [[], [], []]
    assert balanced_shards([7], 2) == [[0], []]
    with pytest.raises(ValueError, match="world"):
        balanced_shards([1], 0)


def test_update_plan_draws_minibatches_then_balances_each_over_ranks():
    """Each optimizer step's mini-batch is the draw the update always made (order[m::M] of the
    step's permutation); only its split over ranks changes, by workload."""
    import random

    import torch

    from swe_aem.train.batch import plan_update, update_lower_bound, whole_batch_shards, workload

    rng = random.Random(1)
    lengths = [max(5_000, min(36_864, int(rng.lognormvariate(9.4, 0.6)))) for _ in range(512)]
    order = torch.randperm(512, generator=torch.Generator().manual_seed(4)).tolist()
    for world in (1, 8, 64):
        plan = plan_update(lengths, world, 8, torch.Generator().manual_seed(4))
        assert len(plan.minibatches) == 8 and all(len(mb) == world for mb in plan.minibatches)
        for m, mb in enumerate(plan.minibatches):
            assert sorted(i for part in mb for i in part) == sorted(order[m::8])
            for part in mb:  # within a rank, the draw's order (one rank: the update as before)
                assert part == [i for i in order[m::8] if i in set(part)]
        assert sorted(i for r in range(world) for i in plan.shard(r)) == list(range(512))
        old = whole_batch_shards(lengths, world, 8, torch.Generator().manual_seed(4))
        bound = update_lower_bound(lengths, plan)
        assert plan.busiest_over_mean(lengths) <= max(1.10, 1.05 * bound)
        assert plan.busiest_over_mean(lengths) <= old.busiest_over_mean(lengths)
    one = plan_update(lengths, 1, 8, torch.Generator().manual_seed(4))
    assert [mb[0] for mb in one.minibatches] == [order[m::8] for m in range(8)]
    assert workload(24_576) == 2 * 24_576  # attention's term equals the linear one there
