"""Advantage estimators against values worked out by hand."""

import math

import pytest
import torch

from prism_lit.rl.advantages import (
    compute_step_advantages,
    discounted_returns_to_go,
    grpo_advantages,
    reinforce_advantages,
    rloo_advantages,
)

RETURNS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_reinforce_subtracts_the_batch_mean():
    assert torch.allclose(reinforce_advantages(RETURNS), RETURNS - 5 / 12)


def test_rloo_uses_the_mean_of_the_other_group_members():
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, -1.0]
    assert torch.allclose(rloo_advantages(RETURNS, GROUPS), torch.tensor(expected), atol=1e-6)


def test_rloo_refuses_groups_of_one():
    with pytest.raises(ValueError, match="at least 2 episodes per group"):
        rloo_advantages(torch.tensor([1.0, 0.0]), [0, 1])


def test_grpo_normalises_inside_each_group_with_the_unbiased_std():
    s = 0.5 / math.sqrt(1 / 3)
    expected = [s, -s, -s, s, 0, 0, 0, 0, 0.5, 0.5, 0.5, -1.5]
    assert torch.allclose(grpo_advantages(RETURNS, GROUPS, eps=0.0), torch.tensor(expected), atol=1e-6)


def test_grpo_without_std_is_mean_centring_and_a_lone_episode_gets_zero():
    adv = grpo_advantages(torch.tensor([3.0, 1.0, 5.0]), [0, 0, 1], norm_by_std=False)
    assert adv.tolist() == [1.0, -1.0, 0.0]


def test_discounted_returns_to_go():
    assert discounted_returns_to_go([1.0, 0.0, 2.0], 0.5) == [1.5, 1.0, 2.0]


def test_gigpo_adds_step_group_advantages_of_identical_anchor_states():
    rewards = [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    anchors = [["a", "b"], ["a", "c"], ["a", "b"]]
    out = compute_step_advantages("gigpo", rewards, [0, 0, 0], anchors, gamma=0.5, step_weight=1.0)
    e = 2 / 3 / math.sqrt(1 / 3)  # episode advantage of the winner; losers get -e/2
    a = (1 / 3) / math.sqrt(1 / 12)  # step group "a": returns-to-go 0.5, 0, 0
    b = 0.5 / math.sqrt(0.5)  # step group "b": returns-to-go 1, 0
    expected = [[e + a, e + b], [-e / 2 - a / 2, -e / 2], [-e / 2 - a / 2, -e / 2 - b]]
    for row, exp_row in zip(out, expected):
        assert row == pytest.approx(exp_row, abs=1e-4)


def test_episode_advantage_is_broadcast_to_every_step_and_unknown_names_fail():
    out = compute_step_advantages("reinforce", [[1.0, 1.0], [0.0]], [0, 1])
    assert out == [[1.0, 1.0], [-1.0]]
    with pytest.raises(ValueError, match="unknown"):
        compute_step_advantages("ppo", [[1.0]], [0])
