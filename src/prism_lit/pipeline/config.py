"""Typed settings of the PRISM pipeline; ``prism-lit pipeline --config X.yaml`` reads them (jsonargparse)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import EmbeddedModelSpec, LoraSpec


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


@dataclass
class BaseModelSettings:
    """The base policy every method starts from.

    Args:
        path: a local Hugging Face model directory. ``None``: prepare the embedded default in the run dir.
        embedded: shape of the embedded default model.
        familiar_task_types: task types the embedded base model is pre-trained on (its prior knowledge);
            the probe corpus mixes these with the others. Empty: pre-train on every type.
        pretrain_tasks: expert episodes (of the familiar types, disjoint from the corpus) for pre-training.
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
    """

    path: str | None = None
    embedded: EmbeddedModelSpec = field(default_factory=EmbeddedModelSpec)
    familiar_task_types: list[str] = field(default_factory=list)
    pretrain_tasks: int = 300
    pretrain_epochs: int = 4
    pretrain_lr: float = 2e-3
    pretrain_batch_size: int = 8
    pretrain_context_weight: float = 0.1
    copy_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.copy_warmup_steps < 0:
            raise ValueError(f"base.copy_warmup_steps must be >= 0, got {self.copy_warmup_steps!r}")
        if self.copy_warmup_steps and self.path is not None:
            raise ValueError(f"base.copy_warmup_steps warms up the embedded default only; base.path is set "
                             f"({self.path!r}): remove one of them")
        if not 0.0 <= self.pretrain_context_weight <= 1.0:
            raise ValueError(f"base.pretrain_context_weight must be in [0, 1], got {self.pretrain_context_weight!r}")
        if self.pretrain_batch_size < 1:
            raise ValueError(f"base.pretrain_batch_size must be >= 1, got {self.pretrain_batch_size!r}")


@dataclass
class ProbeSettings:
    """The PRISM probe and router.

    Args:
        corpus_tasks: expert trajectories measured and routed (the corpus D).
        router: the router as ``{"class_path": ..., "init_args": {...}}`` (see docs/method.md).
        batch_size: trajectories per probe batch.
        max_length: token limit per trajectory (longer ones are truncated on the right; keep it above the corpus's longest
            trajectory, or the final turns are never trained).
    """

    corpus_tasks: int = 400
    router: dict[str, Any] = field(
        default_factory=lambda: {"class_path": "prism_lit.probe.routers.PrismRouter", "init_args": {"score": "gini"}}
    )
    batch_size: int = 8
    max_length: int = 2048


@dataclass
class SFTSettings:
    """Supervised stage on D_SFT.

    Args:
        enabled: run it (``False`` skips to RL from the base model).
        data: ``partition`` (the trajectories routed to SFT) or ``all`` (every trajectory of the corpus).
        epochs, lr, batch_size, max_length: optimisation settings.
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
    lora: LoraSpec | None = None
    context_weight: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if not 0.0 <= self.context_weight <= 1.0:
            raise ValueError(f"sft.context_weight must be in [0, 1], got {self.context_weight!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"sft.warmup_steps must be >= 0, got {self.warmup_steps!r}")


@dataclass
class RLSettings:
    """RL stage on the tasks of D_RL, from the SFT export.

    Args:
        enabled: run it.
        tasks: ``partition`` (tasks routed to RL) or ``all`` (every corpus task).
        module: the RL LightningModule as ``{"class_path": ..., "init_args": {...}}``; the pipeline fills in
            ``policy``, ``protocol``, ``env_id`` and ``env_kwargs``.
        data: init args of the RL task DataModule (``tasks_per_batch``, ...); the pipeline fills in the task list.
        epochs: passes over the RL tasks; the RL budget grows with the number of tasks routed to RL, as in the
            paper's compute comparison (one iteration = ``tasks_per_batch`` tasks × ``group_size`` episodes).
        max_steps: a fixed number of iterations instead (overrides ``epochs``).
        checkpoint_every_n_steps: write ``rl/checkpoints/last.ckpt`` every this many iterations, so a killed RL
            stage resumes mid-stage (an RL stage is often shorter than one pass, so epoch-end checkpoints would
            never come); ``0`` = only at the end.
    """

    enabled: bool = True
    tasks: Literal["partition", "all"] = "partition"
    module: dict[str, Any] = field(
        default_factory=lambda: {"class_path": "prism_lit.rl.reinforce.ReinforceModule", "init_args": {}}
    )
    data: dict[str, Any] = field(default_factory=dict)
    epochs: float = 1.0
    max_steps: int | None = None
    checkpoint_every_n_steps: int = 1

    def __post_init__(self) -> None:
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
