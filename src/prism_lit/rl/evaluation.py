"""Greedy evaluation on fixed task panels: success rate, mean score, mean steps, invalid-action rate, per task type.

:class:`EpisodeMetrics` is a torchmetrics ``Metric`` (sums, synced across ranks), so the RL modules' validation
and test loops report exact panel-wide numbers under DDP. :func:`evaluate_policy` is the same evaluation as a
plain function for the pipeline and scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchmetrics

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.rl.rollout import Episode, RolloutConfig, RolloutEngine, RolloutStats

ALFWORLD_TASK_TYPES = (
    "pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place",
)
KNOWN_TASK_TYPES: dict[str, tuple[str, ...]] = {
    "prism_lit/ALFWorld-v0": ALFWORLD_TASK_TYPES,
    "prism_lit/GuessWord-v0": ("fruit", "animal"),
}


def default_task_types(env_id: str, env_kwargs: dict[str, Any] | None = None) -> list[str]:
    """The task types reported separately for ``env_id`` (others are pooled as ``other``).

    A known list (ALFWorld's six types, guess-word's two), else the env's own ``task_types`` attribute when
    ``env_kwargs`` is given (WebShop: its goal categories), else none (everything pooled).
    """
    if env_id in KNOWN_TASK_TYPES:
        return list(KNOWN_TASK_TYPES[env_id])
    if env_kwargs is None:
        return []
    from prism_lit.rl.rollout import make_env

    env = make_env(env_id, env_kwargs)
    try:
        types = getattr(env.unwrapped, "task_types", None)
        return [str(t) for t in types] if isinstance(types, (list, tuple)) else []
    finally:
        env.close()


class EpisodeMetrics(torchmetrics.Metric):
    """Sums over finished episodes; ``compute()`` gives rates and means, overall and per task type."""

    full_state_update = False

    def __init__(self, task_types: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_types = list(task_types) + ["other"]
        k = len(self.task_types)
        for name in ("episodes", "successes", "score", "steps", "invalid", "returns"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("type_episodes", "type_successes", "type_score"):
            self.add_state(name, default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def _type_index(self, task_type: str) -> int:
        try:
            return self.task_types.index(task_type)
        except ValueError:
            return len(self.task_types) - 1

    def update(self, episodes: Sequence[Episode]) -> None:  # type: ignore[override]
        for ep in episodes:
            self.episodes += 1
            self.successes += float(ep.won)
            self.score += float(ep.score)
            self.steps += len(ep.steps)
            self.invalid += ep.num_invalid
            self.returns += ep.ret
            i = self._type_index(ep.task_type)
            self.type_episodes[i] += 1
            self.type_successes[i] += float(ep.won)
            self.type_score[i] += float(ep.score)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.episodes.clamp(min=1.0)
        out = {
            "success_rate": self.successes / n,
            "mean_score": self.score / n,
            "mean_steps": self.steps / n,
            "invalid_action_rate": self.invalid / self.steps.clamp(min=1.0),
            "mean_return": self.returns / n,
            "episodes": self.episodes,
        }
        for i, name in enumerate(self.task_types):
            if float(self.type_episodes[i]) > 0:
                out[f"success_rate/{name}"] = self.type_successes[i] / self.type_episodes[i]
                out[f"mean_score/{name}"] = self.type_score[i] / self.type_episodes[i]
        return {k: v.float() for k, v in out.items()}


@torch.no_grad()
def evaluate_policy(
    model,
    tokenizer,
    protocol: AgentProtocol,
    env_id: str,
    env_kwargs: dict[str, Any] | None,
    task_ids: Sequence[str],
    seeds: Sequence[int] | None = None,
    *,
    max_steps: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    task_types: Sequence[str] | None = None,
    return_episodes: bool = False,
    episode_mode: str = "auto",
    return_stats: bool = False,
    draft_tokens: int = 3,
) -> dict[str, Any]:
    """Greedy episodes of ``task_ids`` (env seed ``seeds[i]``, default 0..n-1); returns the metrics as floats.

    The dict has ``success_rate``, ``mean_score``, ``mean_steps``, ``invalid_action_rate``, ``mean_return``,
    ``episodes``, per-type ``success_rate/<type>`` and ``mean_score/<type>`` (types: ``task_types``, default
    :func:`default_task_types`; unlisted types are pooled as ``other``), and ``episodes_list`` (the
    :class:`Episode` objects) when ``return_episodes``, and ``rollout_stats`` (a :class:`RolloutStats` summed
    over the batches: time per part, tokens, forwards) when ``return_stats``. ``episode_mode``: as
    ``rollout.episode_mode`` (``auto``: each row keeps its KV cache across turns when the chat template allows; the
    actions are the same either way). ``draft_tokens``: as ``rollout.draft_tokens`` (0: one token per forward).
    """
    task_ids = list(task_ids)
    seeds = list(range(len(task_ids))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(task_ids):
        raise ValueError(f"evaluate_policy: {len(task_ids)} task ids but {len(seeds)} seeds")
    engine = RolloutEngine(env_id, protocol, tokenizer, RolloutConfig(max_new_tokens=max_new_tokens,
                                                                       max_steps=max_steps,
                                                                       episode_mode=episode_mode,
                                                                       draft_tokens=draft_tokens), env_kwargs)
    if task_types is None:
        task_types = default_task_types(env_id, env_kwargs or {})
    metric = EpisodeMetrics(task_types)
    episodes: list[Episode] = []
    stats = RolloutStats()
    try:
        for lo in range(0, len(task_ids), batch_size):
            rows = [(t, s, lo + i) for i, (t, s) in enumerate(zip(task_ids[lo:lo + batch_size],
                                                                  seeds[lo:lo + batch_size]))]
            batch = engine.run(model, rows, greedy=True)
            stats.add(engine.stats)
            metric.update(batch)
            if return_episodes:
                episodes.extend(batch)
    finally:
        engine.close()
    result: dict[str, Any] = {k: float(v) for k, v in metric.compute().items()}
    if return_episodes:
        result["episodes_list"] = episodes
    if return_stats:
        result["rollout_stats"] = stats
    return result
