"""Whole trajectories per batch: the rows of a trajectory tokenised as several sequences stay together."""

import pytest

from prism_lit.data.batching import bucketed_groups


def test_groups_stay_whole_and_batches_respect_their_bounds():
    groups = [[0, 1, 2], [3], [4, 5], [6], [7, 8, 9, 10, 11]]
    lengths = [10, 12, 11, 50, 20, 22, 5, 30, 30, 30, 30, 30]
    batches = bucketed_groups(groups, lengths, batch_size=4, max_tokens=100, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(12))
    for g in groups:
        assert sum(set(g) <= set(b) for b in batches) == 1  # each group inside exactly one batch
    for b in batches:
        if len(b) > 4:  # only a group larger than the batch may exceed it, alone
            assert b in groups
        else:
            assert max(lengths[i] for i in b) * len(b) <= 100 or any(b == g for g in groups)
    assert batches == bucketed_groups(groups, lengths, batch_size=4, max_tokens=100, seed=1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bucketed_groups(groups, lengths, batch_size=0)
