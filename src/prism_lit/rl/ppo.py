"""PPOModule: PPO with a learned value head for multi-turn LLM agents (turn-level GAE).

One training step = one PPO iteration, top to bottom:

1. Rollout. The batch's tasks are played ``group_size`` times each (1 by default: PPO needs no groups) by
   sampling from the current policy; every env step records prompt, reply tokens and their log-probs.
2. Values. ``V(s_t)`` = a linear value head on the policy's last hidden state at the last prompt token (the
   state the reply is chosen in), computed once for the whole buffer without gradients.
3. Advantages. GAE(gamma, lambda) over each episode's env steps (a "turn" is one time step; the reward of a
   step is the env reward minus the invalid-action penalty; an episode that hit a step cap is treated as ended).
   ``returns = advantages + V``; advantages are then normalised over the buffer (``norm_adv``). A step's
   advantage is given to each of its reply tokens.
4. Update. ``update_epochs`` passes over the buffer in ``num_minibatches`` shuffled minibatches (one optimizer
   step each; micro-batches of ``micro_batch_size`` accumulate):

       L = agg(clipped surrogate)  +  vf_coef * mean(0.5 max((V - R)^2, (V_old + clip(V - V_old, +-vf_clip) - R)^2))
           + kl_coef * agg(KL(pi || pi_ref))  -  entropy_coef * agg(H(pi))

   The value head shares the policy's trunk (with LoRA, the adapter) and has its own learning rate.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec
from prism_lit.rl.base import RLModuleBase
from prism_lit.rl.losses import (
    LossAggregation,
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalty,
)
from prism_lit.rl.rollout import RolloutConfig, group_tasks
from prism_lit.rl.scoring import StepSample, collate_steps, policy_forward


class PPOModule(RLModuleBase):
    """PPO with a value head, GAE(lambda) and a clipped value loss (see the module docstring).

    Args:
        gamma / gae_lambda: discount and GAE lambda over env steps.
        update_epochs / num_minibatches: passes over each buffer, and optimizer steps per pass.
        clip_low / clip_high: policy ratio clip; ``vf_clip``: value clip (``None`` = unclipped value loss).
        vf_coef: weight of the value loss; ``value_lr``: value head learning rate (``None`` = ``lr``).
        norm_adv: normalise advantages over the buffer.
        loss_agg: token aggregation of the policy terms (see :mod:`prism_lit.rl.losses`).
        The rest: as :class:`~prism_lit.rl.reinforce.ReinforceModule`.
    """

    def __init__(
        self,
        policy: PolicySpec,
        protocol: AgentProtocol,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        rollout: RolloutConfig | None = None,
        group_size: int = 1,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        update_epochs: int = 4,
        num_minibatches: int = 4,
        micro_batch_size: int = 8,
        clip_low: float = 0.2,
        clip_high: float | None = None,
        vf_clip: float | None = 0.2,
        vf_coef: float = 0.5,
        norm_adv: bool = True,
        loss_agg: LossAggregation = "token-mean",
        lr: float = 1e-6,
        value_lr: float | None = None,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        kl_coef: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        entropy_coef: float = 0.0,
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
        if num_minibatches < 1 or update_epochs < 1:
            raise ValueError("PPOModule: update_epochs and num_minibatches must be >= 1")
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.update_epochs = update_epochs
        self.num_minibatches = num_minibatches
        self.clip_low = clip_low
        self.clip_high = clip_high
        self.vf_clip = vf_clip
        self.vf_coef = vf_coef
        self.norm_adv = norm_adv
        self.loss_agg = loss_agg
        self.value_lr = value_lr
        self.value_head: nn.Linear | None = None
        self.save_specs_as_hparams()

    def configure_extra_modules(self) -> None:
        hidden = self.model.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def configure_optimizers(self):
        policy_params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": policy_params, "lr": self.lr},
                  {"params": list(self.value_head.parameters()), "lr": self.value_lr or self.lr}]
        return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=self.weight_decay)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.float()).squeeze(-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        optimizer = self.optimizers()
        temperature = self.rollout_config.temperature
        pad = self.tokenizer.pad_token_id

        # 1. rollout
        engine = self.train_engine()
        rows = group_tasks(batch["task_ids"], batch["seeds"], self.group_size)
        episodes = engine.run(self.model, rows, generator=self.sampling_generator())
        samples = [StepSample(s.prompt_ids, s.action_ids, s.logprobs) for ep in episodes for s in ep.steps]

        # 2. values of every recorded state, without gradients
        old_values: list[float] = []
        with torch.no_grad():
            for lo in range(0, len(samples), self.micro_batch_size):
                micro = collate_steps(samples[lo:lo + self.micro_batch_size], pad).to(self.device)
                hidden = policy_forward(self.model, micro, temperature, with_hidden=True).state_hidden
                old_values.extend(self.values(hidden).tolist())

        # 3. GAE over each episode's steps; returns = advantages + values
        k = 0
        for ep in episodes:
            n = len(ep.steps)
            values = torch.tensor(old_values[k:k + n], dtype=torch.float64)
            rewards = torch.tensor([s.reward for s in ep.steps], dtype=torch.float64)
            dones = torch.tensor([float(s.done) for s in ep.steps], dtype=torch.float64)
            adv, ret = gae(rewards, values, dones, 0.0, self.gamma, self.gae_lambda)
            for j in range(n):
                samples[k + j].advantage = float(adv[j])
                samples[k + j].ret = float(ret[j])
                samples[k + j].old_value = float(values[j])
            k += n
        if self.norm_adv and len(samples) > 1:
            adv = torch.tensor([s.advantage for s in samples], dtype=torch.float64)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            for s, a in zip(samples, adv.tolist()):
                s.advantage = a

        # 4. update: epochs x minibatches (one optimizer step each) x micro-batches (accumulated)
        logs: dict[str, list[float]] = {}
        size = max(-(-len(samples) // self.num_minibatches), 1)
        for _ in range(self.update_epochs):
            order = torch.randperm(len(samples), generator=self.sampling_generator(), device=self.device).tolist()
            # exactly num_minibatches updates on every rank (each all-reduces), some possibly empty
            for k in range(self.num_minibatches):
                minibatch = [samples[i] for i in order[k * size:(k + 1) * size]]
                num_tokens = sum(len(s.action_ids) for s in minibatch)
                totals = {"num_tokens": num_tokens, "num_seqs": len(minibatch),
                          "norm_length": self.rollout_config.max_new_tokens}
                step_logs: dict[str, float] = {}
                with self.no_grad_sync():
                    for mlo in range(0, len(minibatch), self.micro_batch_size):
                        micro = collate_steps(minibatch[mlo:mlo + self.micro_batch_size], pad).to(self.device)
                        out = policy_forward(self.model, micro, temperature, with_entropy=True, with_hidden=True)
                        mask = micro.action_mask
                        pg_loss, stats = clipped_policy_loss(
                            out.logprobs, micro.old_logprobs, micro.advantages, mask, self.clip_low,
                            self.clip_high, self.loss_agg, **totals)
                        v_loss = clipped_value_loss(self.values(out.state_hidden), micro.old_values, micro.returns,
                                                    self.vf_clip).sum() / len(minibatch)
                        entropy = aggregate(out.entropy, mask, self.loss_agg, **totals)
                        loss = pg_loss + self.vf_coef * v_loss - self.entropy_coef * entropy
                        if self.kl_coef > 0:
                            ref = self.reference_logprobs(micro, temperature)
                            kl = aggregate(kl_penalty(out.logprobs, ref, self.kl_estimator), mask, self.loss_agg,
                                           **totals)
                            loss = loss + self.kl_coef * kl
                            step_logs["train/kl"] = step_logs.get("train/kl", 0.0) + kl.item()
                        self.manual_backward(loss)
                        share = float(mask.sum()) / max(num_tokens, 1)
                        for name, value in [("train/pg_loss", pg_loss.item()), ("train/value_loss", v_loss.item()),
                                            ("train/entropy", entropy.item()),
                                            *((f"train/{k}", float(v) * share) for k, v in stats.items())]:
                            step_logs[name] = step_logs.get(name, 0.0) + value
                step_logs["train/grad_norm"] = self.optimizer_update(optimizer)
                for name, value in step_logs.items():
                    logs.setdefault(name, []).append(value)

        self.iteration += 1
        summary = {name: sum(values) / len(values) for name, values in logs.items()}
        summary.update(self.rollout_metrics(episodes, engine))
        summary["train/value_mean"] = sum(old_values) / max(len(old_values), 1)
        summary["train/samples"] = float(len(samples))
        summary["train/iteration"] = float(self.iteration)
        self.log_dict(summary, on_step=True, on_epoch=False, batch_size=len(rows))

    def export(self, out_dir: str) -> None:
        """The policy in HF format, plus ``value_head.pt`` (the value head's state dict) beside it."""
        super().export(out_dir)
        torch.save(self.value_head.state_dict(), f"{out_dir}/value_head.pt")
