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

    spec = ENV_SPECS.get(env.lower())
    protocol = protocol or (spec.default_protocol() if spec is not None else AgentProtocol())
    stats = write_expert_dataset(
        env_id, n_tasks, out, protocol, split=split, seed=seed, env_kwargs=env_kwargs or {}
    )
    print(json.dumps(stats, indent=2, default=str))


def import_corpus(
    source: str,
    path: str,
    out: str,
    env: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    protocol: AgentProtocol | None = None,
    verbatim: bool = False,
    mapping: str | None = None,
) -> None:
    """Import an AgentGym (AgentTraj) or ETO corpus as prism_lit trajectories whose tasks the env can replay.

    Each item is mapped to the env's task id (WebShop: by its instruction; ALFWorld: by its game path), then
    replayed through ``protocol`` (or kept ``verbatim``). Items that cannot be mapped or replayed are listed with
    the reason in ``<out>.import_report.json`` (docs/data.md, "Importing AgentGym and ETO corpora").

    Args:
        source: ``agentgym`` or ``eto``.
        path: the corpus file (JSON array or JSONL).
        out: output JSONL in the prism_lit schema.
        env: ``webshop`` or ``alfworld`` (required).
        env_kwargs: env settings; ``data_dir`` points at the upstream data the corpus was made from.
        protocol: the agent protocol of the RL stage (default ``thought_action`` replies, as ETO and AgentGym).
        verbatim: keep the recorded conversations instead of replaying them through ``protocol``.
        mapping: AgentGym ALFWorld only: the JSON list of game files its ``alfworld_<n>`` ids index.
    """
    from prism_lit.data.importers import import_corpus as run

    if env is None:
        raise SystemExit("prism-lit import: give the env the corpus is for: --env webshop or --env alfworld")
    report = run(source, path, out, env.lower(), env_kwargs, protocol, verbatim, mapping)
    print(json.dumps({"read": report.read, "written": report.written, "mode": report.mode,
                      "unmapped": len(report.unmapped), "report": f"{out}.import_report.json"}, indent=2))
    for item in report.unmapped[:20]:
        print(f"  not imported: {item['id']}: {item['reason']}")
