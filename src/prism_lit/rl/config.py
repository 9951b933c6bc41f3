"""Hyperparameter groups shared by every RL module (jsonargparse reads them as nested sections).

In YAML, under ``model.init_args`` (or ``rl.module.init_args`` of a pipeline config)::

    optim: {lr: 1.0e-6, weight_decay: 0.0, max_grad_norm: 1.0}
    update: {epochs: 1, minibatch_size: null, num_minibatches: null, micro_batch_size: 8, loss_agg: token-mean}
    kl: {coef: 0.01, estimator: k3}
    evaluation: {max_steps: null, task_types: null, sample_episodes: 4}

and on the command line ``--model.init_args.optim.lr 1e-5``. A section given in part keeps the module's defaults
for the rest (PPO's ``update`` defaults to 4 epochs x 4 minibatches, GRPO's to one pass over the whole buffer).
"""

from __future__ import annotations

from dataclasses import dataclass

from prism_lit.rl.losses import AGGREGATIONS, KL_ESTIMATORS, KLEstimator, LossAggregation


@dataclass
class OptimConfig:
    """AdamW on the trainable parameters.

    Args:
        lr: learning rate of the policy.
        weight_decay: AdamW weight decay.
        max_grad_norm: clip the gradient norm of each optimizer step to this (``None``: no clipping).
    """

    lr: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")


@dataclass
class UpdateConfig:
    """How one rollout buffer is consumed: ``epochs`` passes, each cut into shuffled minibatches (one optimizer
    step each), each run in micro-batches whose gradients accumulate.

    Args:
        epochs: passes over each buffer.
        minibatch_size: steps per optimizer step; the number of minibatches then follows from the buffer (the
            largest over DDP ranks, so every rank takes the same number of steps).
        num_minibatches: a fixed number of optimizer steps per pass instead (some may be empty on a rank);
            ``minibatch_size``, when set, wins. Neither set: the whole buffer is one minibatch.
        micro_batch_size: steps per forward/backward pass (memory), never changes the loss.
        loss_agg: how per-token terms are reduced (see :mod:`prism_lit.rl.losses`): ``token-mean`` (default),
            ``seq-mean-token-sum``, ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``.
    """

    epochs: int = 1
    minibatch_size: int | None = None
    num_minibatches: int | None = None
    micro_batch_size: int = 8
    loss_agg: LossAggregation = "token-mean"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"update.epochs must be >= 1, got {self.epochs}")
        for name in ("minibatch_size", "num_minibatches", "micro_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"update.{name} must be >= 1, got {value}")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"update.loss_agg {self.loss_agg!r} is unknown; choose one of {AGGREGATIONS}")

    def plan(self, num_samples: int) -> tuple[int, int]:
        """``(minibatch size, number of minibatches)`` for a buffer of ``num_samples`` steps on this rank."""
        if self.minibatch_size is not None:
            return self.minibatch_size, -(-num_samples // self.minibatch_size)
        count = self.num_minibatches or 1
        return max(-(-num_samples // count), 1), count


@dataclass
class KLConfig:
    """A KL(policy || reference) term in the loss; the reference is the start policy.

    Args:
        coef: its weight (0: no term, and no reference copy for full fine-tuning).
        estimator: ``k1``, ``k2`` or ``k3`` (Schulman's estimators; k3 is unbiased and >= 0).
    """

    coef: float = 0.0
    estimator: KLEstimator = "k3"

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"kl.coef must be >= 0, got {self.coef}")
        if self.estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl.estimator {self.estimator!r} is unknown; choose one of {KL_ESTIMATORS}")


@dataclass
class EvalConfig:
    """Greedy validation/test on the data module's panels.

    Args:
        max_steps: step cap of evaluation episodes (``None``: the rollout's ``max_steps``).
        task_types: task types reported separately (``None``: the env's own list).
        sample_episodes: episodes per panel written to TensorBoard as a text table.
    """

    max_steps: int | None = None
    task_types: list[str] | None = None
    sample_episodes: int = 4
