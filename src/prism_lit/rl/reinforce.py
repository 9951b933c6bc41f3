"""ReinforceModule: the policy-gradient family (REINFORCE, RLOO, GRPO, GiGPO) for multi-turn LLM agents.

One training step = one RL iteration, top to bottom:

1. Rollout. The batch holds task ids and one env seed per task. Every task is played ``group_size`` times
   with that seed (a group), all episodes at once, by sampling from the current policy. Each env step records
   the prompt, the reply tokens and their log-probs under the rollout policy.
2. Advantages. Episode returns (env rewards minus invalid-action penalties) go through the estimator chosen by
   ``advantage``: ``reinforce`` (batch-mean baseline), ``rloo`` (leave-one-out in the group), ``grpo``
   (group-normalised; the PRISM paper's RL algorithm) or ``gigpo`` (GRPO + step-level groups of identical
   observations). An episode's advantage is given to every reply token of every step of it.
3. Update. ``update_epochs`` passes over the steps in shuffled minibatches of ``minibatch_size`` steps (one
   optimizer step each), each split into micro-batches of ``micro_batch_size`` for gradient accumulation:

       ratio  = exp(log pi(a|s) - log pi_rollout(a|s))                       per reply token
       L_pg   = agg( max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high)) )
       L      = L_pg + kl_coef * agg(KL_k(pi || pi_ref)) - entropy_coef * agg(H(pi))

   ``agg`` is ``loss_agg`` over the minibatch's reply tokens (``token-mean`` by default); the reference policy
   is the base model with the LoRA adapter disabled (no second copy) or a frozen copy for full fine-tuning.
   Gradients are clipped to ``max_grad_norm``. Environment tokens are never in the loss.

``trainer.max_steps`` counts optimizer steps (``update_epochs * ceil(steps / minibatch_size)`` per iteration).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec
from prism_lit.rl.advantages import Estimator, compute_step_advantages
from prism_lit.rl.base import RLModuleBase
from prism_lit.rl.losses import LossAggregation, aggregate, clipped_policy_loss, kl_penalty
from prism_lit.rl.rollout import RolloutConfig, group_tasks
from prism_lit.rl.scoring import StepSample, collate_steps, policy_forward


class ReinforceModule(RLModuleBase):
    """GRPO / RLOO / REINFORCE / GiGPO with a PPO-style clipped ratio (see the module docstring).

    Args:
        policy: the model to train (path, LoRA, dtype, ...); start from the SFT export via ``adapter_path`` or
            ``path``.
        protocol: prompt format and action parsing (must match the SFT data's).
        env_id: gymnasium id; ``env_kwargs``: its kwargs (split, data paths).
        rollout: sampling temperature / top-p, max new tokens, max steps, invalid-action penalty.
        group_size: episodes per task per iteration (G).
        advantage: ``grpo`` (default), ``rloo``, ``reinforce`` or ``gigpo``.
        norm_adv_by_std: GRPO/GiGPO divide by the group std (False: Dr. GRPO's mean-centring only).
        gigpo_gamma / gigpo_step_weight: GiGPO's discount for step returns and weight of the step advantage.
        update_epochs: passes over each rollout buffer; ``minibatch_size``: steps per optimizer step
            (``None``: the whole buffer, one optimizer step per epoch).
        clip_low / clip_high: ratio clip range (``clip_high`` None = symmetric; DAPO uses a larger one).
        loss_agg: token-level aggregation (``token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-mean``,
            ``seq-mean-token-sum-norm``).
        skip_zero_advantage: drop steps whose advantage is exactly 0 (all-equal groups) before the update
            when no KL/entropy term needs them.
        The rest: see :class:`~prism_lit.rl.base.RLModuleBase`.
    """

    def __init__(
        self,
        policy: PolicySpec,
        protocol: AgentProtocol,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        rollout: RolloutConfig | None = None,
        group_size: int = 8,
        advantage: Estimator = "grpo",
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
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        entropy_coef: float = 0.0,
        skip_zero_advantage: bool = True,
        eval_max_steps: int | None = None,
        eval_task_types: list[str] | None = None,
        sample_episodes: int = 4,
        export_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            policy=policy, protocol=protocol, env_id=env_id, env_kwargs=env_kwargs, rollout=rollout,
            group_size=group_size, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            micro_batch_size=micro_batch_size, kl_coef=kl_coef, kl_estimator=kl_estimator,
            entropy_coef=entropy_coef, eval_max_steps=eval_max_steps, eval_task_types=eval_task_types,
            sample_episodes=sample_episodes, export_dir=export_dir, seed=seed,
        )
        if advantage == "rloo" and group_size < 2:
            raise ValueError("advantage='rloo' needs group_size >= 2")
        self.advantage = advantage
        self.norm_adv_by_std = norm_adv_by_std
        self.gigpo_gamma = gigpo_gamma
        self.gigpo_step_weight = gigpo_step_weight
        self.update_epochs = update_epochs
        self.minibatch_size = minibatch_size
        self.clip_low = clip_low
        self.clip_high = clip_high
        self.loss_agg = loss_agg
        self.skip_zero_advantage = skip_zero_advantage
        self.save_specs_as_hparams()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        optimizer = self.optimizers()
        temperature = self.rollout_config.temperature

        # 1. rollout: G episodes per task, same env seed inside a group
        engine = self.train_engine()
        rows = group_tasks(batch["task_ids"], batch["seeds"], self.group_size)
        episodes = engine.run(self.model, rows, generator=self.sampling_generator())

        # 2. advantages: one per episode (per step for GiGPO), broadcast over the reply tokens
        advantages = compute_step_advantages(
            self.advantage,
            step_rewards=[[s.reward for s in ep.steps] for ep in episodes],
            groups=[ep.group for ep in episodes],
            step_anchors=[[s.observation for s in ep.steps] for ep in episodes],
            norm_by_std=self.norm_adv_by_std, gamma=self.gigpo_gamma, step_weight=self.gigpo_step_weight,
        )
        samples = [
            StepSample(s.prompt_ids, s.action_ids, s.logprobs, advantage=a)
            for ep, ep_adv in zip(episodes, advantages) for s, a in zip(ep.steps, ep_adv)
        ]
        if self.skip_zero_advantage and self.kl_coef == 0 and self.entropy_coef == 0:
            samples = [s for s in samples if s.advantage != 0.0]

        # 3. update: epochs x minibatches (one optimizer step each) x micro-batches (accumulated)
        logs: dict[str, list[float]] = {}
        size = self.minibatch_size or max(len(samples), 1)
        # the same number of updates on every rank (each one all-reduces); ranks with fewer samples run empty ones
        n_minibatches = self.agreed_count(-(-len(samples) // size))
        if n_minibatches == 0:  # every group everywhere was all-equal: nothing to learn, keep max_steps counting
            for _ in range(self.update_epochs):
                optimizer.step()  # no parameter has a gradient: nothing changes except the step counter
        for _ in range(self.update_epochs if n_minibatches else 0):
            order = torch.randperm(len(samples), generator=self.sampling_generator(), device=self.device).tolist()
            for k in range(n_minibatches):
                minibatch = [samples[i] for i in order[k * size:(k + 1) * size]]
                num_tokens = sum(len(s.action_ids) for s in minibatch)
                totals = {"num_tokens": num_tokens, "num_seqs": len(minibatch),
                          "norm_length": self.rollout_config.max_new_tokens}
                step_logs: dict[str, float] = {}
                with self.no_grad_sync():
                    for mlo in range(0, len(minibatch), self.micro_batch_size):
                        micro = collate_steps(minibatch[mlo:mlo + self.micro_batch_size],
                                              self.tokenizer.pad_token_id).to(self.device)
                        out = policy_forward(self.model, micro, temperature, with_entropy=True)
                        mask = micro.action_mask
                        pg_loss, stats = clipped_policy_loss(
                            out.logprobs, micro.old_logprobs, micro.advantages, mask, self.clip_low,
                            self.clip_high, self.loss_agg, **totals)
                        entropy = aggregate(out.entropy, mask, self.loss_agg, **totals)
                        loss = pg_loss - self.entropy_coef * entropy
                        if self.kl_coef > 0:
                            ref = self.reference_logprobs(micro, temperature)
                            kl = aggregate(kl_penalty(out.logprobs, ref, self.kl_estimator), mask, self.loss_agg,
                                           **totals)
                            loss = loss + self.kl_coef * kl
                            step_logs["train/kl"] = step_logs.get("train/kl", 0.0) + kl.item()
                        self.manual_backward(loss)
                        # micro-batch terms are already scaled to the minibatch: their sum is the minibatch value
                        share = float(mask.sum()) / max(num_tokens, 1)
                        for name, value in [("train/pg_loss", pg_loss.item()), ("train/entropy", entropy.item()),
                                            *((f"train/{k}", float(v) * share) for k, v in stats.items())]:
                            step_logs[name] = step_logs.get(name, 0.0) + value
                step_logs["train/grad_norm"] = self.optimizer_update(optimizer)
                for name, value in step_logs.items():
                    logs.setdefault(name, []).append(value)

        self.iteration += 1
        summary = {name: sum(values) / len(values) for name, values in logs.items()}
        summary.update(self.rollout_metrics(episodes, engine))
        summary["train/samples"] = float(len(samples))
        summary["train/iteration"] = float(self.iteration)
        self.log_dict(summary, on_step=True, on_epoch=False, batch_size=len(rows))
