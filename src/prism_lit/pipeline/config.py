"""Typed settings of the PRISM pipeline; ``prism-lit pipeline --config X.yaml`` reads them (jsonargparse).

Every value is checked when its section is built, that is when the config is parsed, before the first stage
runs: a bad setting costs no compute. The router and the RL module are typed plugins: jsonargparse builds them
from ``{class_path, init_args}`` (so ``--probe.router.init_args.rl_fraction 0.3`` works), and Python callers may
pass the same dict or the object itself.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import EmbeddedModelSpec, LoraSpec, PolicySpec
from prism_lit.probe.reuse import probe_source
from prism_lit.probe.routers import PrismRouter, Router
from prism_lit.rl.base import RLModuleBase

# What the pipeline passes to the RL module's factory when the RL stage starts; the config gives the rest.
RLModuleFactory = Callable[[PolicySpec, AgentProtocol, str, dict[str, Any]], RLModuleBase]


def _import_class(class_path: str, option: str) -> type:
    module_name, _, class_name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{option}.class_path: {class_path!r} cannot be imported ({err})") from None


def _check_init_args(cls: type, init_args: dict[str, Any], option: str, given: tuple[str, ...] = ()) -> None:
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(init_args) - set(params))
    if unknown:
        accepted = sorted(set(params) - set(given) - {"self"})
        raise ValueError(f"{option}.init_args: {cls.__name__} has no argument {', '.join(map(repr, unknown))}; "
                         f"it accepts {', '.join(accepted)}")


def _plugin_class(spec: Any, base: type, option: str, given: tuple[str, ...] = ()) -> tuple[type, dict[str, Any]]:
    """The class and init args of ``{"class_path": ..., "init_args": {...}}``, checked against ``base`` and the
    class's signature (``given``: the arguments the caller adds later)."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{option}: expected {{class_path: ..., init_args: {{...}}}}, got {spec!r}")
    cls = _import_class(spec["class_path"], option)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{option}.class_path: {spec['class_path']!r} is not a {base.__name__} subclass")
    init_args = dict(spec.get("init_args") or {})
    _check_init_args(cls, init_args, option, given)
    return cls, init_args


def build_plugin(spec: Any, base: type, option: str) -> Any:
    """An object from ``{"class_path": ..., "init_args": {...}}`` (or the object itself), checked to be a ``base``."""
    if isinstance(spec, base):
        return spec
    cls, init_args = _plugin_class(spec, base, option)
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{option}.init_args: {err}") from None


def rl_module_factory(spec: Any, option: str = "rl.module") -> RLModuleFactory:
    """A factory of the RL module from a class_path dict (jsonargparse gives one already built)."""
    if callable(spec) and not isinstance(spec, dict):
        return spec
    cls, init_args = _plugin_class(spec, RLModuleBase, option, given=("policy", "protocol", "env_id", "env_kwargs"))
    return functools.partial(cls, **init_args)


def plugin_spec(obj: Any) -> dict[str, Any]:
    """``{class_path, init_args}`` of a plugin object or factory, for the run's records (JSON values).

    init_args are read back from attributes named like the constructor's parameters (the convention of every
    router and RL module here); a value that is not kept under its own name is left out.
    """
    if isinstance(obj, functools.partial):
        cls = obj.func if isinstance(obj.func, type) else next((a for a in reversed(obj.args) if isinstance(a, type)),
                                                              None)
        init_args = dict(obj.keywords)
        if cls is None:
            return {"class_path": repr(obj), "init_args": _jsonable(init_args)}
    else:
        cls = type(obj)
        params = [p for p in inspect.signature(cls).parameters.values()
                  if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        init_args = {p.name: getattr(obj, p.name) for p in params if hasattr(obj, p.name)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _jsonable(init_args)}


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                          if not f.name.startswith("_")})
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def settings_json(section: Any) -> Any:
    """A settings section as JSON values, plugins as their ``{class_path, init_args}``."""
    import dataclasses

    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        out = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            plugin = isinstance(value, (Router, functools.partial)) or f.name == "module"
            out[f.name] = plugin_spec(value) if plugin else settings_json(value)
        return out
    return _jsonable(section)


def _at_least(option: str, value: Any, low: float) -> None:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{option} must be >= {low:g}, got {value!r}")


def _positive(option: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} must be > 0, got {value!r}")


@dataclass
class EnvSettings:
    """The environment and the protocol every stage uses.

    Args:
        id: ``webshop``, ``alfworld`` or a registered gymnasium id.
        kwargs: keyword arguments of ``gymnasium.make`` (catalogue size, generator seed, ...), without ``split``.
        protocol: prompt and action format, shared by expert data, SFT, RL and evaluation.
        train_split: split the expert corpus and the RL tasks come from.
        eval_splits: split name -> number of tasks in its fixed evaluation panel.
        expert_kwargs: keyword arguments of the env's expert (e.g. WebShop ``{"query": "short"}``).
    """

    id: str = "webshop"
    kwargs: dict[str, Any] = field(default_factory=dict)
    protocol: AgentProtocol = field(default_factory=lambda: AgentProtocol(env="webshop"))
    train_split: str = "train"
    eval_splits: dict[str, int] = field(default_factory=lambda: {"test": 50})
    expert_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.protocol, dict):
            self.protocol = AgentProtocol(**self.protocol)
        if "split" in self.kwargs:
            raise ValueError("env.kwargs.split: the split is set per use (env.train_split for the corpus and RL, "
                             "env.eval_splits for evaluation); remove it from env.kwargs")
        for split, n in self.eval_splits.items():
            _at_least(f"env.eval_splits.{split}", n, 1)
        if self.train_split in self.eval_splits:
            raise ValueError(f"env.eval_splits: {self.train_split!r} is also env.train_split, where the corpus and the "
                             f"RL tasks come from; evaluate on a held-out split")


@dataclass
class BaseModelSettings:
    """The base policy every method starts from.

    Args:
        path: a local Hugging Face model directory. ``None``: prepare the embedded default in the run dir.
        embedded: shape of the embedded default model.
        familiar_task_types: task types the embedded base model is pre-trained on (its prior knowledge);
            the probe corpus mixes these with the others. Empty: pre-train on every type.
        pretrain_tasks: expert episodes (of the familiar types, disjoint from the corpus) for pre-training.
        unfamiliar_pretrain_tasks: expert episodes of the other task types (those not in ``familiar_task_types``)
            added to pre-training, drawn from the train split of ``env.kwargs`` without the corpus's tasks. A few
            make those types rare rather than absent, as most tasks are for a pre-trained LLM: sampling then wins
            some, which GRPO needs (a group earns a gradient only when its returns differ). 0: never seen.
        pretrain_env_kwargs: env keyword arguments for the pre-training episodes only, over ``env.kwargs`` (e.g.
            ALFWorld ``{n_per_type: 600}``: a larger pool of games, so the base sees more distinct games than the
            corpus split holds). The train split's first games are the same, so the corpus's are still left out.
        pretrain_rename_fraction: the share of pre-training episodes whose target object is renamed to a made-up
            word in every message (0 to 1; the env must name its tasks' objects: ``EnvSpec.object_words``, ALFWorld
            does). A base that saw only a fixed set of object kinds writes one of them for any task; renamed
            episodes make it read the object from the task (``prism_lit.data.augment``).
        pretrain_epochs: passes over them.
        pretrain_lr: learning rate of that full fine-tune.
        pretrain_batch_size: trajectories per pre-training step (small batches: more updates for the same compute,
            which a small model needs to learn to copy from the instruction).
        pretrain_context_weight: loss weight of the observation and prompt tokens during pre-training, relative to
            the replies (language modelling on the interaction text teaches the model to read and copy from it;
            0: the replies only).
        copy_warmup_steps: steps of copy warm-up before pre-training (half bare copies, half in the chat format,
            batch 16, on words of the pre-training tasks; see ``prism_lit.policy.copy_warmup``). A small model
            trained from scratch on episodes never starts copying from its context without it. 0: none.
        copy_warmup_nonce_fraction: the share of copied words that are made-up letter strings (0 to 1): a model
            that must copy words it never saw in pre-training (ALFWorld's valid_unseen objects) needs them.
        dtype: parameter dtype of every policy the pipeline loads (``float32``, ``bfloat16``, ``float16``); mixed
            precision is the trainer's ``precision``. An 8B model wants ``bfloat16``.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2`` where installed.
        gradient_checkpointing: recompute activations in the backward pass of the probe, SFT and RL (less memory).
        chat_template: replaces the tokenizer's chat template (a file or the template text); ``None``: the one
            shipped with the model.
        chat_template_kwargs: settings the template reads (Qwen3: ``{enable_thinking: false}``), applied wherever a
            conversation is rendered: SFT, probe, rollouts, evaluation (docs/policy.md).
    """

    path: str | None = None
    embedded: EmbeddedModelSpec = field(default_factory=EmbeddedModelSpec)
    familiar_task_types: list[str] = field(default_factory=list)
    pretrain_tasks: int = 300
    unfamiliar_pretrain_tasks: int = 0
    pretrain_env_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrain_rename_fraction: float = 0.0
    pretrain_epochs: int = 4
    pretrain_lr: float = 2e-3
    pretrain_batch_size: int = 8
    pretrain_context_weight: float = 0.1
    copy_warmup_steps: int = 0
    copy_warmup_nonce_fraction: float = 0.0
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "split" in self.pretrain_env_kwargs:
            raise ValueError("base.pretrain_env_kwargs.split: pre-training plays env.train_split; remove it")
        if self.pretrain_env_kwargs and self.path is not None:
            raise ValueError(f"base.pretrain_env_kwargs shapes the embedded default's pre-training only; base.path "
                             f"is set ({self.path!r}): remove one of them")
        if not 0.0 <= self.pretrain_rename_fraction <= 1.0:
            raise ValueError(f"base.pretrain_rename_fraction must be in [0, 1], got {self.pretrain_rename_fraction!r}")
        if self.pretrain_rename_fraction and self.path is not None:
            raise ValueError(f"base.pretrain_rename_fraction shapes the embedded default's pre-training only; "
                             f"base.path is set ({self.path!r}): remove one of them")
        if self.unfamiliar_pretrain_tasks < 0:
            raise ValueError(f"base.unfamiliar_pretrain_tasks must be >= 0, got {self.unfamiliar_pretrain_tasks!r}")
        if self.unfamiliar_pretrain_tasks and (self.path is not None or not self.familiar_task_types):
            raise ValueError("base.unfamiliar_pretrain_tasks adds episodes of the types outside "
                             "base.familiar_task_types to the embedded default's pre-training: it needs "
                             f"familiar_task_types set and base.path null (got {self.familiar_task_types!r} and "
                             f"{self.path!r})")
        if self.copy_warmup_steps < 0:
            raise ValueError(f"base.copy_warmup_steps must be >= 0, got {self.copy_warmup_steps!r}")
        if self.copy_warmup_steps and self.path is not None:
            raise ValueError(f"base.copy_warmup_steps warms up the embedded default only; base.path is set "
                             f"({self.path!r}): remove one of them")
        if not 0.0 <= self.copy_warmup_nonce_fraction <= 1.0:
            raise ValueError(f"base.copy_warmup_nonce_fraction must be in [0, 1], got "
                             f"{self.copy_warmup_nonce_fraction!r}")
        if self.copy_warmup_nonce_fraction and not self.copy_warmup_steps:
            raise ValueError("base.copy_warmup_nonce_fraction is set but base.copy_warmup_steps is 0: there is no "
                             "warm-up to put nonce words in")
        if not 0.0 <= self.pretrain_context_weight <= 1.0:
            raise ValueError(f"base.pretrain_context_weight must be in [0, 1], got {self.pretrain_context_weight!r}")
        _at_least("base.pretrain_batch_size", self.pretrain_batch_size, 1)
        _at_least("base.pretrain_tasks", self.pretrain_tasks, 1)
        _at_least("base.pretrain_epochs", self.pretrain_epochs, 1)
        _positive("base.pretrain_lr", self.pretrain_lr)
        if isinstance(self.embedded, dict):
            self.embedded = EmbeddedModelSpec(**self.embedded)
        PolicySpec(path=self.path or ".", dtype=self.dtype)  # checks the dtype name


@dataclass
class ProbeSettings:
    """The PRISM probe and router.

    Args:
        corpus_tasks: expert trajectories measured and routed (the corpus D), generated by the env's expert.
        corpus_file: use this trajectory file as the corpus D instead (prism_lit JSONL, e.g. from
            ``prism-lit import agentgym|eto``); its task ids must be tasks of ``env.train_split``, so the RL stage
            can replay the ones routed to RL. ``corpus_tasks`` is then ignored.
        scores_from: route the records of an earlier probe pass (its ``probe`` directory or ``probe.jsonl``) instead
            of measuring: for router ablations on one base and corpus. Used only if that pass measured this run's
            model and corpus (compared by content) with the same rendering and ``max_length``; else the stage stops,
            naming what differs. ``prism-lit compare`` sets it for you (``share_probe``).
        router: the router, ``{"class_path": ..., "init_args": {...}}`` in YAML (see docs/method.md); any
            :class:`~prism_lit.probe.routers.Router` subclass, yours included.
        batch_size: trajectories per probe batch.
        max_length: token limit per trajectory (longer ones are truncated on the right; keep it above the corpus's longest
            trajectory, or the final turns are never trained).
        max_tokens: cap on padded tokens per probe batch (longest × count; a longer single trajectory still runs
            alone); bounds the probe's activation memory (``prism-lit memory``). ``None``: ``batch_size`` alone.
    """

    corpus_tasks: int = 400
    corpus_file: str | None = None
    scores_from: str | None = None
    router: Router = field(default_factory=lambda: PrismRouter(score="gini"))
    batch_size: int = 8
    max_length: int = 2048
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        self.router = build_plugin(self.router, Router, "probe.router")
        _at_least("probe.corpus_tasks", self.corpus_tasks, 1)
        if self.corpus_file is not None and not os.path.isfile(self.corpus_file):
            raise FileNotFoundError(f"probe.corpus_file: {self.corpus_file!r} is not a file")
        if self.scores_from is not None:
            probe_source(self.scores_from)
        _at_least("probe.batch_size", self.batch_size, 1)
        _at_least("probe.max_length", self.max_length, 2)
        if self.max_tokens is not None:
            _at_least("probe.max_tokens", self.max_tokens, 2)


@dataclass
class SFTSettings:
    """Supervised stage on D_SFT.

    Args:
        enabled: run it (``False`` skips to RL from the base model).
        data: ``partition`` (the trajectories routed to SFT) or ``all`` (every trajectory of the corpus).
        epochs, lr, batch_size, max_length: optimisation settings. ``max_length`` (tokens per trajectory; longer
            ones lose their last turns, counted in the stage's record and the summary) also bounds the embedded
            base's pre-training episodes.
        max_tokens: cap on padded tokens per SFT batch (longest × count), as ``probe.max_tokens``.
        lora: train a LoRA adapter instead of the full model.
        context_weight: loss weight of the observation and prompt tokens, relative to the replies (as
            ``base.pretrain_context_weight``; 0: the replies only, as in TRL's assistant-only loss).
        warmup_steps, schedule: the learning-rate schedule (linear warm-up, then ``constant``, ``linear`` or
            ``cosine`` decay to a tenth of ``lr``), as :class:`~prism_lit.sft.SFTModule` takes it. A fresh AdamW
            at the full rate from the first step shakes a trained base; a warm-up avoids that.
    """

    enabled: bool = True
    data: Literal["partition", "all"] = "partition"
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 8
    max_length: int = 2048
    max_tokens: int | None = None
    lora: LoraSpec | None = None
    context_weight: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if not 0.0 <= self.context_weight <= 1.0:
            raise ValueError(f"sft.context_weight must be in [0, 1], got {self.context_weight!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"sft.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        _at_least("sft.epochs", self.epochs, 1)
        _at_least("sft.batch_size", self.batch_size, 1)
        _at_least("sft.max_length", self.max_length, 2)
        if self.max_tokens is not None:
            _at_least("sft.max_tokens", self.max_tokens, 2)
        # lr 0 would train and export unchanged weights under a record that says they were trained
        _positive("sft.lr", self.lr)
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**self.lora)


@dataclass
class RLSettings:
    """RL stage on the tasks of D_RL, from the SFT export.

    Args:
        enabled: run it.
        tasks: ``partition`` (tasks routed to RL) or ``all`` (every corpus task).
        module: the RL LightningModule, ``{"class_path": ..., "init_args": {...}}`` in YAML (any
            :class:`~prism_lit.rl.base.RLModuleBase` subclass); the pipeline gives ``policy``, ``protocol``,
            ``env_id`` and ``env_kwargs`` (and ``export_dir``, ``seed``) when the RL stage starts.
        data: init args of the RL task DataModule (``tasks_per_batch``, ...); the pipeline fills in the task list.
        epochs: passes over the RL tasks; the RL budget grows with the number of tasks routed to RL, as in the
            paper's compute comparison (one iteration = ``tasks_per_batch`` tasks × ``group_size`` episodes).
        max_steps: a fixed number of iterations instead (overrides ``epochs``).
        checkpoint_every_n_steps: write ``rl/checkpoints/last.ckpt`` every this many iterations, so a killed RL
            stage resumes mid-stage (an RL stage is often shorter than one pass, so epoch-end checkpoints would
            never come); ``0`` = only at the end.
        env_kwargs: env keyword arguments for the RL rollouts only, over ``env.kwargs`` (e.g. a reward variant:
            ``{soft_fraction: 0.5}`` for judge-scored constraints in training). The corpus, the base and the
            evaluation panels keep ``env.kwargs``, so runs that differ only here share them (``compare``); the
            task ids must stay those of ``env.kwargs``.
    """

    enabled: bool = True
    tasks: Literal["partition", "all"] = "partition"
    module: RLModuleFactory = field(
        default_factory=lambda: rl_module_factory({"class_path": "prism_lit.rl.GRPOModule"}))
    data: dict[str, Any] = field(default_factory=dict)
    epochs: float = 1.0
    max_steps: int | None = None
    checkpoint_every_n_steps: int = 1
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.module = rl_module_factory(self.module)
        if "split" in self.env_kwargs:
            raise ValueError("rl.env_kwargs.split: RL plays env.train_split; remove it")
        from prism_lit.rl.tasks import RLTaskDataModule

        _check_init_args(RLTaskDataModule, self.data, "rl.data", given=("env_id", "env_kwargs", "task_ids", "seed"))
        _at_least("rl.data.tasks_per_batch", self.data.get("tasks_per_batch", 1), 1)
        for name in ("env_id", "env_kwargs", "task_ids", "partition_path", "seed"):
            if name in self.data:
                raise ValueError(f"rl.data.{name}: the pipeline sets it (from env and the probe's partition); "
                                 f"remove it")
        _positive("rl.epochs", self.epochs)
        if self.max_steps is not None:
            _at_least("rl.max_steps", self.max_steps, 1)
        if self.checkpoint_every_n_steps < 0:
            raise ValueError(f"rl.checkpoint_every_n_steps must be >= 0 (0 = only at the end), got "
                             f"{self.checkpoint_every_n_steps!r}")


@dataclass
class EvalSettings:
    """Greedy evaluation of the final policy (and of the base and SFT policies for the report).

    Args:
        policies: which policies to evaluate: any of ``base``, ``sft``, ``final``.
        max_steps: episode step limit during evaluation; ``None`` = the env's registered limit.
        batch_size: episodes run at once.
        max_new_tokens: reply length cap per step.
    """

    policies: list[str] = field(default_factory=lambda: ["base", "final"])
    max_steps: int | None = None
    batch_size: int = 25
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in EVAL_POLICIES]
        if unknown:
            raise ValueError(f"eval.policies: unknown policy {unknown[0]!r}; choose from {', '.join(EVAL_POLICIES)}")
        if self.max_steps is not None:
            _at_least("eval.max_steps", self.max_steps, 1)
        _at_least("eval.batch_size", self.batch_size, 1)
        _at_least("eval.max_new_tokens", self.max_new_tokens, 1)


EVAL_POLICIES = ("base", "sft", "final")
