"""GRPOModule: the group-relative policy-gradient family (GRPO, RLOO, REINFORCE, GiGPO) for multi-turn LLM agents.

One iteration (the loop is :class:`~prism_lit.rl.base.RLModuleBase`'s; this file holds the algorithm):

1. Rollout. Every task of the batch is played ``group_size`` times with one env seed (a group), sampling from the
   current policy; each env step records the prompt, the reply tokens and their log-probs.
2. Advantages (``build_samples``). Episode returns (env rewards minus invalid-action penalties) go through the
   estimator named by ``advantage`` (:data:`~prism_lit.rl.advantages.ADVANTAGE_ESTIMATORS`): ``reinforce``
   (batch-mean baseline), ``rloo`` (leave-one-out in the group), ``grpo`` (group-normalised; the PRISM paper's RL
   algorithm) or ``gigpo`` (GRPO + step-level groups of identical observations), or one you registered. An
   episode's advantage is given to every reply token of every step of it.
3. Loss (``loss``), per reply token, reduced with ``update.loss_agg`` over the minibatch:

       ratio = exp(log pi(a|s) - log pi_rollout(a|s))
       L_pg  = agg( max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high)) )

   to which the base adds ``kl.coef * agg(KL(pi || pi_ref)) - entropy_coef * agg(H(pi))``.

Steps with advantage 0 (every group whose returns are all equal) stay in the buffer and in the loss's
denominator, as in verl: a batch where most groups carry no signal takes a proportionally smaller step. With
``skip_zero_advantage`` (default) their forward/backward is skipped when no KL/entropy term needs them: their
policy-gradient term is exactly 0, so the loss and the gradient are the same, only cheaper.

``trainer.max_steps`` counts optimizer steps (``update.epochs`` x minibatches per iteration).
"""

from __future__ import annotations

from typing import Any

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec
from prism_lit.rl.advantages import compute_step_advantages, get_estimator
from prism_lit.rl.base import RLModuleBase
from prism_lit.rl.losses import Minibatch, clipped_surrogate
from prism_lit.rl.rollout import Episode
from prism_lit.rl.scoring import PolicyOutput, StepSample, TokenBatch


class GRPOModule(RLModuleBase):
    """GRPO / RLOO / REINFORCE / GiGPO with a PPO-style clipped ratio (see the module docstring).

    Args:
        advantage: a name in :data:`~prism_lit.rl.advantages.ADVANTAGE_ESTIMATORS`: ``grpo`` (default), ``rloo``,
            ``reinforce``, ``gigpo``, or one added with :func:`~prism_lit.rl.advantages.register_advantage`.
        norm_adv_by_std: GRPO/GiGPO divide by the group std (False: Dr. GRPO's mean-centring only).
        gigpo_gamma / gigpo_step_weight: GiGPO's discount for step returns and weight of the step advantage.
        clip_low / clip_high: ratio clip range (``clip_high`` None = symmetric; DAPO uses a larger one).
        skip_zero_advantage: skip the forward/backward of steps whose advantage is exactly 0 when no KL/entropy
            term needs them (they still count in the loss's denominator; the gradient is unchanged).
        policy, protocol, env_id, env_kwargs, **kwargs: the shared arguments of
            :class:`~prism_lit.rl.base.RLModuleBase` (rollout, group_size, optim, update, kl, entropy_coef,
            evaluation, export_dir, seed).
    """

    def __init__(
        self,
        policy: PolicySpec,
        protocol: AgentProtocol,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        advantage: str = "grpo",
        norm_adv_by_std: bool = True,
        gigpo_gamma: float = 0.95,
        gigpo_step_weight: float = 1.0,
        clip_low: float = 0.2,
        clip_high: float | None = None,
        skip_zero_advantage: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(policy, protocol, env_id, env_kwargs, **kwargs)
        get_estimator(advantage)  # an unknown name fails here, naming the registered ones
        if advantage == "rloo" and self.group_size < 2:
            raise ValueError("advantage='rloo' needs group_size >= 2")
        self.advantage = advantage
        self.norm_adv_by_std = norm_adv_by_std
        self.gigpo_gamma = gigpo_gamma
        self.gigpo_step_weight = gigpo_step_weight
        self.clip_low = clip_low
        self.clip_high = clip_high
        self.skip_zero_advantage = skip_zero_advantage

    def build_samples(self, episodes: list[Episode]) -> list[StepSample]:
        advantages = compute_step_advantages(
            self.advantage,
            step_rewards=[[s.reward for s in ep.steps] for ep in episodes],
            groups=[ep.group for ep in episodes],
            step_anchors=[[s.observation for s in ep.steps] for ep in episodes],
            norm_by_std=self.norm_adv_by_std, gamma=self.gigpo_gamma, step_weight=self.gigpo_step_weight,
        )
        return [StepSample(s.prompt_ids, s.action_ids, s.logprobs, advantage=a)
                for ep, ep_adv in zip(episodes, advantages) for s, a in zip(ep.steps, ep_adv)]

    def skip_sample(self, sample: StepSample) -> bool:
        return self.skip_zero_advantage and sample.advantage == 0.0

    def loss(self, out: PolicyOutput, batch: TokenBatch, mb: Minibatch):
        return clipped_surrogate(out.logprobs, batch.old_logprobs, batch.advantages, batch.action_mask, mb,
                                 self.clip_low, self.clip_high)

    def iteration_logs(self, episodes: list[Episode], samples: list[StepSample]) -> dict[str, float]:
        zero = sum(s.advantage == 0.0 for s in samples)
        return {"train/zero_advantage_frac": zero / max(len(samples), 1)}
