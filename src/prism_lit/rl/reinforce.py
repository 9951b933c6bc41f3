"""Deprecated: ``ReinforceModule`` is :class:`~prism_lit.rl.grpo.GRPOModule` under its old name, with the old flat
arguments, so configs written for it still load. It will be removed in the next release.

Migrate a config by changing ``class_path`` to ``prism_lit.rl.GRPOModule`` and moving the flat arguments into
their groups: ``lr``/``weight_decay``/``max_grad_norm`` -> ``optim: {lr, weight_decay, max_grad_norm}``;
``update_epochs``/``minibatch_size``/``micro_batch_size``/``loss_agg`` -> ``update: {epochs, minibatch_size,
micro_batch_size, loss_agg}``; ``kl_coef``/``kl_estimator`` -> ``kl: {coef, estimator}``;
``eval_max_steps``/``eval_task_types``/``sample_episodes`` -> ``evaluation: {max_steps, task_types,
sample_episodes}``. The other arguments keep their names.
"""

from __future__ import annotations

import warnings
from typing import Any

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec
from prism_lit.rl.config import EvalConfig, KLConfig, OptimConfig, UpdateConfig
from prism_lit.rl.grpo import GRPOModule
from prism_lit.rl.losses import KLEstimator, LossAggregation
from prism_lit.rl.rollout import RolloutConfig

_GROUPS = ("optim", "update", "kl", "evaluation")


class ReinforceModule(GRPOModule):
    """Deprecated alias of :class:`~prism_lit.rl.grpo.GRPOModule` with the old flat arguments (see the module
    docstring for the mapping)."""

    def __init__(
        self,
        policy: PolicySpec,
        protocol: AgentProtocol,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        rollout: RolloutConfig | None = None,
        group_size: int = 8,
        advantage: str = "grpo",
        norm_adv_by_std: bool = True,
        gigpo_gamma: float = 0.95,
        gigpo_step_weight: float = 1.0,
        update_epochs: int = 1,
        minibatch_size: int | None = None,
        micro_batch_size: int = 8,
        clip_low: float = 0.2,
        clip_high: float | None = None,
        loss_agg: LossAggregation = "token-mean",
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k3",
        entropy_coef: float = 0.0,
        skip_zero_advantage: bool = True,
        eval_max_steps: int | None = None,
        eval_task_types: list[str] | None = None,
        sample_episodes: int = 4,
        export_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        warnings.warn(
            "prism_lit.rl.reinforce.ReinforceModule is deprecated and will be removed in the next release: use "
            "prism_lit.rl.GRPOModule with grouped arguments (optim, update, kl, evaluation; see "
            "prism_lit.rl.reinforce's docstring for the mapping)", FutureWarning, stacklevel=2)
        super().__init__(
            policy=policy, protocol=protocol, env_id=env_id, env_kwargs=env_kwargs, rollout=rollout,
            group_size=group_size, advantage=advantage, norm_adv_by_std=norm_adv_by_std, gigpo_gamma=gigpo_gamma,
            gigpo_step_weight=gigpo_step_weight, clip_low=clip_low, clip_high=clip_high,
            skip_zero_advantage=skip_zero_advantage, entropy_coef=entropy_coef, export_dir=export_dir, seed=seed,
            optim=OptimConfig(lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm),
            update=UpdateConfig(epochs=update_epochs, minibatch_size=minibatch_size,
                                micro_batch_size=micro_batch_size, loss_agg=loss_agg),
            kl=KLConfig(coef=kl_coef, estimator=kl_estimator),
            evaluation=EvalConfig(max_steps=eval_max_steps, task_types=eval_task_types,
                                  sample_episodes=sample_episodes),
        )
        for name in _GROUPS:  # hparams keep the old flat names only, so load_from_checkpoint rebuilds this class
            self.hparams.pop(name, None)
