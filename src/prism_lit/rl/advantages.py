"""Advantage estimators for the policy-gradient family (one advantage per episode, or per step for GiGPO).

All take episode returns ``R`` (1-D) and, where grouped, the group id of each episode (the G episodes of one
task with one env seed share a group).

- ``reinforce``: ``A_i = R_i - mean(R)`` over the whole batch (batch-mean baseline).
- ``rloo``: ``A_i = R_i - mean_{j != i, same group} R_j`` (leave-one-out; = ``G/(G-1) (R_i - mean_group)``).
- ``grpo``: ``A_i = (R_i - mean_group) / (std_group + eps)`` with the unbiased std (as verl); a group whose
  returns are all equal gets 0. ``norm_by_std=False`` gives Dr. GRPO's mean-only centring.
- ``gigpo``: GRPO's episode advantage plus ``step_weight`` times a step-level advantage: steps of the same group
  that start from the same observation ("anchor state") form a step group, and their discounted returns-to-go
  are normalised inside it (GiGPO, Feng et al. 2025).

``ADVANTAGE_ESTIMATORS`` maps each name to a function of :class:`AdvantageInputs`; :func:`register_advantage`
adds one, which ``GRPOModule(advantage=...)`` then accepts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def reinforce_advantages(returns: torch.Tensor) -> torch.Tensor:
    """Return minus the batch mean."""
    returns = returns.double()
    return (returns - returns.mean()).float()


def _group_index(groups: Sequence[int] | torch.Tensor) -> torch.Tensor:
    groups = torch.as_tensor(list(groups) if not isinstance(groups, torch.Tensor) else groups)
    return torch.unique(groups, return_inverse=True)[1]


def rloo_advantages(returns: torch.Tensor, groups: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline inside each group (every group needs >= 2 episodes)."""
    returns = returns.double()
    index = _group_index(groups)
    n = int(index.max()) + 1
    sums = torch.zeros(n, dtype=returns.dtype).index_add_(0, index, returns)
    counts = torch.zeros(n, dtype=returns.dtype).index_add_(0, index, torch.ones_like(returns))
    if bool((counts < 2).any()):
        raise ValueError("rloo advantages need at least 2 episodes per group (group_size >= 2)")
    baseline = (sums[index] - returns) / (counts[index] - 1)
    return (returns - baseline).float()


def grpo_advantages(
    returns: torch.Tensor, groups: Sequence[int] | torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-normalised returns (see the module docstring)."""
    returns = returns.double()
    index = _group_index(groups)
    adv = torch.zeros_like(returns)
    for g in range(int(index.max()) + 1):
        sel = index == g
        r = returns[sel]
        if r.numel() < 2:
            continue  # a lone episode has no group to compare against
        if bool(r.max() == r.min()):
            continue  # all-equal returns: no signal (and no 0/0 when eps is 0)
        centred = r - r.mean()
        adv[sel] = centred / (r.std(unbiased=True) + eps) if norm_by_std else centred
    return adv.float()


def discounted_returns_to_go(rewards: Sequence[float], gamma: float) -> list[float]:
    out, running = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def gigpo_step_advantages(
    step_rewards: Sequence[Sequence[float]],
    step_anchors: Sequence[Sequence[str]],
    groups: Sequence[int],
    gamma: float = 0.95,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> list[list[float]]:
    """Step-level advantages: discounted return-to-go normalised among steps with the same (group, anchor state)."""
    rtg = [discounted_returns_to_go(r, gamma) for r in step_rewards]
    buckets: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    for e, (anchors, group) in enumerate(zip(step_anchors, groups)):
        for t, anchor in enumerate(anchors):
            buckets[(int(group), anchor)].append((e, t))
    out = [[0.0] * len(r) for r in step_rewards]
    for members in buckets.values():
        if len(members) < 2:
            continue
        values = torch.tensor([rtg[e][t] for e, t in members], dtype=torch.float64)
        if bool(values.max() == values.min()):
            continue
        centred = values - values.mean()
        normed = centred / (values.std(unbiased=True) + eps) if norm_by_std else centred
        for (e, t), a in zip(members, normed.tolist()):
            out[e][t] = a
    return out


@dataclass
class AdvantageInputs:
    """What an estimator sees: per episode, its step rewards, its group id and the observation of each step."""

    step_rewards: Sequence[Sequence[float]]
    groups: Sequence[int]
    step_anchors: Sequence[Sequence[str]] | None = None
    norm_by_std: bool = True
    gamma: float = 0.95  # GiGPO's discount of step returns-to-go
    step_weight: float = 1.0  # GiGPO's weight of the step advantage

    def returns(self) -> torch.Tensor:
        return torch.tensor([float(sum(r)) for r in self.step_rewards], dtype=torch.float64)

    def broadcast(self, episode_advantages: torch.Tensor) -> list[list[float]]:
        """One advantage per episode, given to each of its steps."""
        return [[float(a)] * len(r) for a, r in zip(episode_advantages.tolist(), self.step_rewards)]


AdvantageEstimator = Callable[[AdvantageInputs], list[list[float]]]


def _gigpo(inputs: AdvantageInputs) -> list[list[float]]:
    if inputs.step_anchors is None:
        raise ValueError("gigpo needs the anchor observation of every step")
    episode = inputs.broadcast(grpo_advantages(inputs.returns(), inputs.groups, norm_by_std=inputs.norm_by_std))
    step = gigpo_step_advantages(inputs.step_rewards, inputs.step_anchors, inputs.groups, gamma=inputs.gamma,
                                 norm_by_std=inputs.norm_by_std)
    return [[a + inputs.step_weight * s for a, s in zip(row, srow)] for row, srow in zip(episode, step)]


# name -> estimator; GRPOModule's ``advantage`` picks one. Add your own with :func:`register_advantage`.
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "reinforce": lambda x: x.broadcast(reinforce_advantages(x.returns())),
    "rloo": lambda x: x.broadcast(rloo_advantages(x.returns(), x.groups)),
    "grpo": lambda x: x.broadcast(grpo_advantages(x.returns(), x.groups, norm_by_std=x.norm_by_std)),
    "gigpo": _gigpo,
}


def register_advantage(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make ``fn(inputs: AdvantageInputs) -> per-episode, per-step advantages`` usable as
    ``advantage: <name>``. Registering a taken name is an error (no silent replacement of a built-in)."""

    def add(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return add


def get_estimator(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"advantage estimator {name!r} is unknown; choose one of {sorted(ADVANTAGE_ESTIMATORS)} "
                         "or add one with prism_lit.rl.advantages.register_advantage")
    return ADVANTAGE_ESTIMATORS[name]


def compute_step_advantages(
    estimator: str,
    step_rewards: Sequence[Sequence[float]],
    groups: Sequence[int],
    step_anchors: Sequence[Sequence[str]] | None = None,
    norm_by_std: bool = True,
    gamma: float = 0.95,
    step_weight: float = 1.0,
) -> list[list[float]]:
    """Per-episode, per-step advantages of the registered ``estimator``."""
    fn = get_estimator(estimator)
    return fn(AdvantageInputs(step_rewards, groups, step_anchors, norm_by_std, gamma, step_weight))
