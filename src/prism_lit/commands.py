"""Small CLI commands that are not Trainer entry points."""

from __future__ import annotations

import json
from typing import Any

from prism_lit.envs.protocol import AgentProtocol


def resolve_env_id(env: str) -> str:
    """The Gymnasium id of a registered env's short name (``webshop``); any other id is returned as given."""
    from prism_lit.envs import ENV_SPECS

    spec = ENV_SPECS.get(env.lower())
    return spec.gym_id if spec is not None else env


def generate(
    env: str,
    out: str,
    n_tasks: int = 100,
    split: str = "train",
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    protocol: AgentProtocol | None = None,
) -> None:
    """Generate ``n_tasks`` tasks of ``env`` and write the oracle's expert trajectories to ``out`` (JSONL).

    Args:
        env: ``webshop``, ``alfworld`` or a registered gymnasium id.
        out: output JSONL path (prism_lit trajectory schema, docs/data.md).
        n_tasks: number of expert episodes.
        split: task split (webshop: train/eval/test; alfworld: train/valid_seen/valid_unseen).
        seed: generation seed.
        env_kwargs: keyword arguments for ``gymnasium.make``.
        protocol: prompt/action protocol (use the same one for SFT and RL).
    """
    import prism_lit.envs  # noqa: F401  (registers the ids)
    from prism_lit.envs.experts import write_expert_dataset

    env_id = resolve_env_id(env)
    from prism_lit.envs import ENV_SPECS

    protocol = protocol or AgentProtocol(env=env.lower() if env.lower() in ENV_SPECS else "generic")
    stats = write_expert_dataset(
        env_id, n_tasks, out, protocol, split=split, seed=seed, env_kwargs=env_kwargs or {}
    )
    print(json.dumps(stats, indent=2, default=str))
