"""Expert (oracle) episodes written as SFT data in the project's trajectory schema.

An expert is any object with ``reset(observation, info)`` and ``act(observation, info) -> (action, thought)``.
Expert classes are constructed with the environment they play as their only argument (``cls(env)``), so an
oracle may read the task's ground truth from ``env.unwrapped``; the agent never sees it.

``record_expert_episode`` plays one episode and keeps the *full* conversation (every turn, no history
truncation) in the exact text the :class:`~prism_lit.envs.protocol.AgentProtocol` produces, so SFT trains on
what the RL rollouts later show the model. ``write_expert_dataset`` does this for N tasks of a split and
writes JSONL atomically.

Reset convention shared by every env of the project: ``env.reset(seed=s, options={"task_id": "<id>"})`` plays
that task; without a ``task_id`` the seed picks a task of the env's split deterministically. ``info`` always
carries ``admissible_actions`` (list of str), ``won`` (bool), ``task_id`` (str) and ``task_type`` (str).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym

from prism_lit.data.schema import Message, Trajectory, write_trajectories
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.envs.spec import env_spec

__all__ = [
    "Expert",
    "ExpertEpisodeError",
    "record_expert_episode",
    "resolve_env",
    "write_expert_dataset",
]


class Expert(Protocol):
    """An oracle policy. Construct it as ``cls(env)``; it may read ground truth from ``env.unwrapped``."""

    def reset(self, observation: str, info: dict) -> None:
        """Start a new episode (called right after ``env.reset``)."""

    def act(self, observation: str, info: dict) -> tuple[str, str | None]:
        """The env action to take now, and an optional thought explaining it."""


class ExpertEpisodeError(RuntimeError):
    """The expert did not finish an episode within the step guard."""


def resolve_env(env_id: str) -> tuple[str, str, str | None]:
    """``(name, gymnasium id, expert path)`` of a registered env, given its short name or Gymnasium id."""
    try:
        spec = env_spec(env_id)
    except ValueError as err:
        raise ValueError(f"unknown env id {env_id!r}: {err}") from None
    return spec.name, spec.gym_id, spec.expert


def record_expert_episode(
    env: gym.Env,
    expert: Expert,
    protocol: AgentProtocol,
    *,
    traj_id: str,
    seed: int | None = None,
    options: dict | None = None,
    env_name: str | None = None,
    max_steps: int = 1000,
) -> Trajectory:
    """Play one episode with ``expert`` and return it as a :class:`Trajectory`.

    ``messages`` is the whole conversation: system, then a user turn (the rendered observation with its
    admissible actions) and an assistant turn (the formatted reply) per step. ``reward`` is the episode
    return, ``won`` is ``info["won"]`` after the last step. ``max_steps`` guards envs without a time limit.
    """
    obs, info = env.reset(seed=seed, options=options)
    expert.reset(obs, info)
    messages = [Message("system", protocol.system)]
    total, steps = 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        if steps >= max_steps:
            raise ExpertEpisodeError(
                f"{traj_id}: expert did not finish task {info.get('task_id')!r} within {max_steps} steps"
            )
        admissible = info["admissible_actions"]
        messages.append(Message("user", protocol.render_observation(obs, admissible)))
        action, thought = expert.act(obs, info)
        messages.append(Message("assistant", protocol.format_reply(action, thought, admissible=admissible)))
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
    return Trajectory(
        id=traj_id,
        env=env_name or getattr(env.unwrapped, "env_name", None) or protocol.env,
        task_id=str(info["task_id"]),
        task_type=str(info.get("task_type", "")),
        messages=messages,
        reward=total,
        won=bool(info["won"]),
        meta={"steps": steps, "terminated": bool(terminated), "truncated": bool(truncated), "seed": seed},
    )


def write_expert_dataset(
    env_id: str,
    n_tasks: int,
    out_path: str | os.PathLike,
    protocol: AgentProtocol,
    *,
    split: str = "train",
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    expert_factory: Callable[[gym.Env], Expert] | None = None,
    expert_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record expert episodes for ``n_tasks`` tasks of ``split`` and write them to ``out_path`` (JSONL).

    Tasks: when the env exposes ``task_ids`` (the ids of its split), distinct tasks are taken in a
    seed-shuffled order (cycling if ``n_tasks`` exceeds the split); otherwise the seeds ``seed + i`` pick them.
    ``expert_kwargs`` go to the expert's constructor (e.g. ``{"query": "short"}`` for WebShop).
    Returns ``{"path", "count", "won", "win_rate", "mean_steps", "mean_reward", "seconds"}``.
    """
    if n_tasks < 1:
        raise ValueError(f"write_expert_dataset: n_tasks must be >= 1, got {n_tasks}")
    family, gym_id, _ = resolve_env(env_id)
    kwargs = dict(env_kwargs or {})
    if kwargs.get("split", split) != split:
        raise ValueError(f"write_expert_dataset: split={split!r} but env_kwargs has split={kwargs['split']!r}")
    kwargs["split"] = split
    start = time.perf_counter()
    env = gym.make(gym_id, **kwargs)
    try:
        factory = expert_factory or env_spec(gym_id).expert_class()
        expert = factory(env, **(expert_kwargs or {}))
        task_ids = list(getattr(env.unwrapped, "task_ids", None) or [])
        if task_ids:
            order = list(task_ids)
            random.Random(seed).shuffle(order)
        trajectories = []
        for i in range(n_tasks):
            options = {"task_id": order[i % len(order)]} if task_ids else None
            trajectories.append(
                record_expert_episode(
                    env, expert, protocol, traj_id=f"{family}-{split}-{i:05d}", seed=seed + i,
                    options=options, env_name=family,
                )
            )
    finally:
        env.close()
    write_trajectories(out_path, trajectories)
    won = sum(bool(t.won) for t in trajectories)
    return {
        "path": str(out_path),
        "count": len(trajectories),
        "won": won,
        "win_rate": won / len(trajectories),
        "mean_steps": sum(t.meta["steps"] for t in trajectories) / len(trajectories),
        "mean_reward": sum(float(t.reward or 0.0) for t in trajectories) / len(trajectories),
        "seconds": time.perf_counter() - start,
    }
