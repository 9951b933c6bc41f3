"""Routers: probe records → Partition (D_SFT / D_RL). Chosen in YAML by class_path, e.g.

    router:
      class_path: prism_lit.probe.PrismRouter
      init_args: {score: gini, rl_fraction: 0.5}

Score-threshold rule (PRISM, magnitude; inverse mirrors it): with f = rl_fraction and t the (1 − f)
quantile of the scores (linear interpolation between order statistics, as numpy/torch `quantile`),

    RL  iff  s > t          SFT  iff  s ≤ t

so f = 0.5 is the paper's median split (for an even count the median is the mean of the two middle
scores; for an odd count the middle trajectory goes to SFT). Ties: every trajectory whose score equals t
goes to SFT, so with tied scores D_RL can be smaller than f·n — never larger. f = 1 sends all to RL, f = 0
none. A record whose score is not finite (NaN: e.g. the kurtosis of a constant norm vector, or a
trajectory without trained tokens) cannot be ranked: it goes to SFT, with a warning, and does not enter
the quantile.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from prism_lit.probe.partition import Partition
from prism_lit.probe.records import CONCENTRATION_SCORES, ProbeRecord

__all__ = [
    "AllRLRouter",
    "AllSFTRouter",
    "InverseRouter",
    "MagnitudeRouter",
    "PrismRouter",
    "RandomRouter",
    "Router",
    "VerifiedRewardRouter",
    "quantile",
]

ConcentrationScore = Literal["gini", "kurtosis", "cv"]


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of `values` with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: q must lie in [0, 1], got {q}")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _check_fraction(rl_fraction: float) -> float:
    if not 0.0 <= rl_fraction <= 1.0:
        raise ValueError(f"rl_fraction must lie in [0, 1], got {rl_fraction}")
    return float(rl_fraction)


def _check_unique(records: Sequence[ProbeRecord]) -> None:
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"router: duplicate trajectory ids in the probe records: {dup[:5]}")


def _partition(
    records: Sequence[ProbeRecord],
    rl: set[str],
    router: str,
    score: str | None,
    threshold: float | None,
    rl_fraction: float | None,
) -> Partition:
    return Partition(
        router=router,
        score=score,
        threshold=threshold,
        rl_fraction=rl_fraction,
        sft_ids=sorted(r.id for r in records if r.id not in rl),
        rl_ids=sorted(r.id for r in records if r.id in rl),
        task_of={r.id: r.task_id for r in records},
        task_type_of={r.id: r.task_type for r in records},
    )


class Router:
    """Base class: `route(records) -> Partition`. Subclasses set `name` (written into partition.json).

    ``needs_scores = False`` says the router reads only the records' ids, tasks and types (not what the probe
    measured), so the pipeline routes such baselines without running (or paying for) a probe pass.
    """

    name: str = "router"
    needs_scores: bool = True

    def route(self, records: Sequence[ProbeRecord]) -> Partition:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class _ThresholdRouter(Router):
    """RL iff sign·score > the (1 − rl_fraction) quantile of sign·score (sign −1 inverts the order)."""

    sign = 1.0

    def __init__(self, score: str, rl_fraction: float) -> None:
        self.score = score
        self.rl_fraction = _check_fraction(rl_fraction)

    def route(self, records: Sequence[ProbeRecord]) -> Partition:
        _check_unique(records)
        values = {r.id: self.sign * r.score(self.score) for r in records}
        finite = {i: v for i, v in values.items() if math.isfinite(v)}
        unranked = sorted(set(values) - set(finite))
        if unranked:
            warnings.warn(
                f"{type(self).__name__}: {len(unranked)} trajectories have a non-finite '{self.score}' "
                f"(e.g. {unranked[:3]}); they go to SFT",
                stacklevel=2,
            )
        if not finite:
            return _partition(records, set(), self.name, self.score, None, self.rl_fraction)
        t = -math.inf if self.rl_fraction == 1.0 else quantile(list(finite.values()), 1.0 - self.rl_fraction)
        rl = {i for i, v in finite.items() if v > t}
        return _partition(records, rl, self.name, self.score, self.sign * t, self.rl_fraction)


class PrismRouter(_ThresholdRouter):
    """PRISM: high gradient concentration → RL. RL iff score > the (1 − rl_fraction) quantile (median at 0.5).

    score: "gini" (paper default), "kurtosis" or "cv". Ties at the threshold go to SFT (module docstring).
    """

    name = "prism"

    def __init__(self, score: ConcentrationScore = "gini", rl_fraction: float = 0.5) -> None:
        if score not in CONCENTRATION_SCORES:
            raise ValueError(f"PrismRouter: score must be gini, kurtosis or cv, got {score!r}")
        super().__init__(score, rl_fraction)


class InverseRouter(_ThresholdRouter):
    """Ablation: low concentration → RL. RL iff score < the rl_fraction quantile (threshold); ties → SFT."""

    name = "inverse"
    sign = -1.0

    def __init__(self, score: ConcentrationScore = "gini", rl_fraction: float = 0.5) -> None:
        if score not in CONCENTRATION_SCORES:
            raise ValueError(f"InverseRouter: score must be gini, kurtosis or cv, got {score!r}")
        super().__init__(score, rl_fraction)


class MagnitudeRouter(_ThresholdRouter):
    """Ablation: large gradients → RL. RL iff the L2 norm over all units > the (1 − rl_fraction) quantile."""

    name = "magnitude"

    def __init__(self, rl_fraction: float = 0.5) -> None:
        super().__init__("l2", rl_fraction)


class RandomRouter(Router):
    """Baseline: exactly round(rl_fraction · n) trajectories drawn at random (seeded) → RL.

    The draw depends only on the seed and the set of ids (not on record order). ``seed=None``: the pipeline uses
    the run's seed, so seeds sample the routing's variance (used directly, ``None`` draws with seed 0).
    """

    name = "random"
    needs_scores = False

    def __init__(self, rl_fraction: float = 0.5, seed: int | None = None) -> None:
        self.rl_fraction = _check_fraction(rl_fraction)
        self.seed = seed

    def route(self, records: Sequence[ProbeRecord]) -> Partition:
        _check_unique(records)
        ids = sorted(r.id for r in records)
        k = math.floor(self.rl_fraction * len(ids) + 0.5)
        rl = set(random.Random(0 if self.seed is None else self.seed).sample(ids, k))
        return _partition(records, rl, self.name, None, None, self.rl_fraction)


class AllSFTRouter(Router):
    """Baseline: every trajectory → SFT (plain SFT on 100 %)."""

    name = "all_sft"
    needs_scores = False

    def route(self, records: Sequence[ProbeRecord]) -> Partition:
        _check_unique(records)
        return _partition(records, set(), self.name, None, None, 0.0)


class AllRLRouter(Router):
    """Baseline: every trajectory → RL (RL on all tasks)."""

    name = "all_rl"
    needs_scores = False

    def route(self, records: Sequence[ProbeRecord]) -> Partition:
        _check_unique(records)
        return _partition(records, {r.id for r in records}, self.name, None, None, 1.0)


class VerifiedRewardRouter(Router):
    """Precision-first data refinement ("Precision over Diversity", arXiv 2601.04954): RL only on tasks whose
    reward is checked by code; a task whose reward a judge pays (in part) is dropped, or sent to SFT.

    Whether a task's reward is verified is the env's word: ``info["reward_verified"]`` after ``reset`` on the
    task (the instruction-following env: no soft constraint pays). An env without that key counts every task as
    verified. The router plays no episode and reads no probe score.

    Args:
        unverified: ``drop`` (in neither D_SFT nor D_RL) or ``sft`` (to D_SFT: an expert answer is a precise
            target even where the reward is not).
        env_id / env_kwargs: the env whose reward RL pays; ``None`` (the default in a pipeline config): the
            pipeline fills in the RL stage's env (``env.kwargs`` with ``rl.env_kwargs`` on ``env.train_split``).
    """

    name = "verified_reward"
    needs_scores = False

    def __init__(self, unverified: Literal["drop", "sft"] = "drop", env_id: str | None = None,
                 env_kwargs: dict[str, Any] | None = None) -> None:
        if unverified not in ("drop", "sft"):
            raise ValueError(f"VerifiedRewardRouter: unverified must be 'drop' or 'sft', got {unverified!r}")
        self.unverified = unverified
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})

    def verified_tasks(self, task_ids: Sequence[str]) -> set[str]:
        """The task ids among ``task_ids`` whose reward the env says is code-verified."""
        import gymnasium as gym

        import prism_lit.envs  # noqa: F401  (registers the ids)

        if self.env_id is None:
            raise ValueError("VerifiedRewardRouter: no env_id (the pipeline sets it; give it when routing by hand)")
        env = gym.make(self.env_id, **self.env_kwargs)
        try:
            verified = set()
            for task_id in sorted(set(task_ids)):
                _, info = env.reset(seed=0, options={"task_id": task_id})
                if info.get("reward_verified", True):
                    verified.add(task_id)
            return verified
        finally:
            env.close()

    def route(self, records: Sequence[ProbeRecord]) -> Partition:
        _check_unique(records)
        verified = self.verified_tasks([r.task_id for r in records])
        rl = {r.id for r in records if r.task_id in verified}
        kept = records if self.unverified == "sft" else [r for r in records if r.id in rl]
        return _partition(kept, rl, self.name, None, None, len(rl) / len(records) if records else 0.0)
