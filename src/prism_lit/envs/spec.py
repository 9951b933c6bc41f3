"""One :class:`EnvSpec` per environment: everything the CLI, the pipeline, evaluation and reports need to know
about an env, registered next to it.

Adding an environment is one folder plus one ``register_env(EnvSpec(...))`` call (see docs/architecture.md);
``prism-lit generate <name>``, ``env.id: <name>`` in a pipeline config, the evaluation's per-type table and the
report's env name then all work. Entry points are strings, so registering imports nothing heavy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from gymnasium.envs.registration import register, registry

__all__ = ["ENV_SPECS", "EnvMetrics", "EnvSpec", "env_metrics", "env_spec", "register_env"]


class EnvMetrics:
    """An env's own metrics beyond success and score, read from the ``info`` of each episode's last step.

    The pipeline stays env-agnostic: the eval stage records :meth:`episode` per episode (``eval/episodes.jsonl``,
    key ``outcomes``) and :meth:`panel` per policy and split (``eval/eval.json``, key ``env_metrics``); the RL
    stage logs :meth:`rollout` of every iteration's episodes (``env/<name>``, in ``rl/metrics.jsonl``). This base
    class reports nothing; an env subclasses it and names the subclass in its :class:`EnvSpec` (``metrics``).
    """

    #: per-episode outcomes that are rates (their mean over episodes means something): reports give them
    #: bootstrap intervals like the success rate
    rates: tuple[str, ...] = ()

    def episode(self, info: dict[str, Any]) -> dict[str, float]:
        """Numbers of one finished episode (from its last ``info``)."""
        return {}

    def panel(self, outcomes: list[dict[str, float]]) -> dict[str, Any]:
        """A panel's metrics from its episodes' :meth:`episode` outcomes."""
        return {}

    def rollout(self, infos: list[dict[str, Any]]) -> dict[str, float]:
        """Training metrics of one RL iteration's episodes (their last ``info``); NaN-free values are logged."""
        return {}

    def training_summary(self, sums: dict[str, float], means: dict[str, float]) -> dict[str, float]:
        """One run's RL summary from its iterations' :meth:`rollout` numbers: their sums (counts pool into rates)
        and their means over iterations. Reports and ``compare`` show it (``rl/<name>``)."""
        return {}


@dataclass(frozen=True)
class EnvSpec:
    """What the framework knows about one environment.

    Args:
        name: short alias used in configs, commands and reports (``webshop``).
        gym_id: the Gymnasium id (``prism_lit/WebShop-v0``).
        entry_point: ``"module:Class"`` of the env (or the class itself).
        max_episode_steps: Gymnasium's time limit.
        expert: ``"module:Class"`` of the env's oracle (``cls(env, **expert_kwargs)``, see ``envs/experts.py``);
            ``None``: no expert data can be generated.
        task_types: the task types reported separately by evaluation (empty: read the env's ``task_types``
            attribute, else pool everything).
        splits: the env's task splits (train first).
        score: what ``info["score"]`` means, for the docs and reports.
        protocol: the :class:`~prism_lit.envs.protocol.AgentProtocol` settings this env's commands default to
            (e.g. ``{"reply_format": "text"}`` where the whole response is the action).
        metrics: ``"module:Class"`` of the env's :class:`EnvMetrics` (``None``: success and score only).
        object_words: ``"module:function"`` giving, for a task id, the words that name the task's target object(s)
            in its text (what ``base.pretrain_rename_fraction`` renames); ``None``: the env has no such notion.
    """

    name: str
    gym_id: str
    entry_point: Any
    max_episode_steps: int
    expert: str | None = None
    task_types: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "test")
    score: str = "the episode's final reward in [0, 1]"
    protocol: dict[str, Any] = field(default_factory=dict)
    metrics: str | None = None
    object_words: str | None = None

    def metrics_class(self) -> type[EnvMetrics]:
        if self.metrics is None:
            return EnvMetrics
        module_name, _, attr = self.metrics.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def object_words_function(self):
        """The function of ``object_words`` (task id -> words), imported; ValueError where the env has none."""
        if self.object_words is None:
            raise ValueError(f"env {self.name!r} does not name its tasks' target objects (EnvSpec.object_words)")
        module_name, _, attr = self.object_words.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def default_protocol(self):
        from prism_lit.envs.protocol import AgentProtocol

        return AgentProtocol(env=self.name, **self.protocol)

    def expert_class(self) -> type:
        if self.expert is None:
            raise ValueError(f"env {self.name!r} has no expert (EnvSpec.expert is None), so no expert data can be "
                             f"generated for it")
        module_name, _, attr = self.expert.partition(":")
        return getattr(importlib.import_module(module_name), attr)


ENV_SPECS: dict[str, EnvSpec] = {}


def register_env(spec: EnvSpec, **gym_kwargs: Any) -> EnvSpec:
    """Register ``spec`` with the framework and its id with Gymnasium (idempotent)."""
    if spec.gym_id not in registry:
        register(id=spec.gym_id, entry_point=spec.entry_point, max_episode_steps=spec.max_episode_steps,
                 **gym_kwargs)
    ENV_SPECS[spec.name] = spec
    return spec


def env_spec(env: str) -> EnvSpec:
    """The spec of ``env``, given as its short name (any case) or its Gymnasium id."""
    key = str(env).strip()
    for spec in ENV_SPECS.values():
        if key.lower() == spec.name or key == spec.gym_id:
            return spec
    known = ", ".join(f"{s.name!r} ({s.gym_id})" for s in ENV_SPECS.values())
    raise ValueError(f"unknown env {env!r}; registered environments: {known}")


def env_metrics(env: str) -> EnvMetrics:
    """The :class:`EnvMetrics` of ``env`` (a name or Gymnasium id); the reporting-nothing base for an env
    registered outside prism_lit or without its own."""
    import prism_lit.envs  # noqa: F401  (registers the specs)

    try:
        spec = env_spec(env)
    except ValueError:
        return EnvMetrics()
    return spec.metrics_class()()
