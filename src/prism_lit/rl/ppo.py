"""PPOModule: PPO with a learned value head for multi-turn LLM agents (turn-level GAE).

One iteration (the loop is :class:`~prism_lit.rl.base.RLModuleBase`'s; this file holds the algorithm):

1. Rollout. The batch's tasks are played ``group_size`` times each (1 by default: PPO needs no groups) by
   sampling from the current policy; every env step records prompt, reply tokens and their log-probs.
2. Values (``build_samples``). ``V(s_t)`` = a linear value head on the policy's last hidden state at the last
   prompt token (the state the reply is chosen in), computed once for the whole buffer without gradients.
3. Advantages. GAE(gamma, lambda) over each episode's env steps (a "turn" is one time step; the reward of a
   step is the env reward minus the invalid-action penalty; an episode that hit a step cap is treated as ended).
   ``returns = advantages + V``; advantages are then normalised over the buffer (``norm_adv``). A step's
   advantage is given to each of its reply tokens.
4. Loss (``loss``), in ``update.epochs`` passes of ``update.num_minibatches`` minibatches (4 x 4 by default):

       L = agg(clipped surrogate)  +  vf_coef * mean(0.5 max((V - R)^2, (V_old + clip(V - V_old, +-vf_clip) - R)^2))

   to which the base adds the KL and entropy terms. The value head shares the policy's trunk (with LoRA, the
   adapter) and has its own learning rate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism_lit.distributed import is_rank_zero
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec
from prism_lit.rl.base import RLModuleBase
from prism_lit.rl.config import UpdateConfig
from prism_lit.rl.losses import Minibatch, clipped_surrogate, clipped_value_loss, gae
from prism_lit.rl.rollout import Episode
from prism_lit.rl.scoring import PolicyOutput, StepSample, TokenBatch

PPO_UPDATE = UpdateConfig(epochs=4, num_minibatches=4)  # the default: 4 passes x 4 minibatches


class PPOModule(RLModuleBase):
    """PPO with a value head, GAE(lambda) and a clipped value loss (see the module docstring).

    Args:
        gamma / gae_lambda: discount and GAE lambda over env steps.
        clip_low / clip_high: policy ratio clip; ``vf_clip``: value clip (``None`` = unclipped value loss).
        vf_coef: weight of the value loss; ``value_lr``: value head learning rate (``None`` = ``optim.lr``).
        norm_adv: normalise advantages over the buffer.
        group_size: episodes per task (1: PPO needs no groups).
        update: as :class:`~prism_lit.rl.config.UpdateConfig`, by default 4 epochs x 4 minibatches.
        policy, protocol, env_id, env_kwargs, **kwargs: the other shared arguments of
            :class:`~prism_lit.rl.base.RLModuleBase`.
    """

    needs_state_hidden = True

    def __init__(
        self,
        policy: PolicySpec,
        protocol: AgentProtocol,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_low: float = 0.2,
        clip_high: float | None = None,
        vf_clip: float | None = 0.2,
        vf_coef: float = 0.5,
        norm_adv: bool = True,
        value_lr: float | None = None,
        group_size: int = 1,
        update: UpdateConfig = PPO_UPDATE,
        **kwargs,
    ) -> None:
        super().__init__(policy, protocol, env_id, env_kwargs, group_size=group_size, update=update, **kwargs)
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.clip_low = clip_low
        self.clip_high = clip_high
        self.vf_clip = vf_clip
        self.vf_coef = vf_coef
        self.norm_adv = norm_adv
        self.value_lr = value_lr
        self.value_head: nn.Linear | None = None

    def configure_extra_modules(self) -> None:
        hidden = self.model.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def configure_optimizers(self):
        policy_params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": policy_params, "lr": self.optim.lr},
                  {"params": list(self.value_head.parameters()), "lr": self.value_lr or self.optim.lr}]
        return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=self.optim.weight_decay)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.float()).squeeze(-1)

    def build_samples(self, episodes: list[Episode]) -> list[StepSample]:
        samples = [StepSample(s.prompt_ids, s.action_ids, s.logprobs) for ep in episodes for s in ep.steps]
        # values of every recorded state (each reply's last prompt token), without gradients
        with torch.no_grad():
            for replies, _, out in self.scored_micro_batches(samples, with_hidden=True):
                for sample, value in zip(replies, self.values(out.state_hidden).tolist()):
                    sample.old_value = value
        old_values = [s.old_value for s in samples]
        # GAE over each episode's steps; returns = advantages + values
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
        return samples

    def loss(self, out: PolicyOutput, batch: TokenBatch, mb: Minibatch):
        pg_loss, logs = clipped_surrogate(out.logprobs, batch.old_logprobs, batch.advantages, batch.action_mask, mb,
                                          self.clip_low, self.clip_high)
        v_loss = clipped_value_loss(self.values(out.state_hidden), batch.old_values, batch.returns,
                                    self.vf_clip).sum() / mb.num_seqs
        logs["train/value_loss"] = v_loss.item()
        return pg_loss + self.vf_coef * v_loss, logs

    def iteration_logs(self, episodes: list[Episode], samples: list[StepSample]) -> dict[str, float]:
        return {"train/value_mean": sum(s.old_value for s in samples) / max(len(samples), 1)}

    def export(self, out_dir: str) -> None:
        """The policy in HF format, plus ``value_head.pt`` (the value head's state dict) beside it."""
        super().export(out_dir)
        if is_rank_zero():  # the head is replicated, not sharded: one writer
            torch.save(self.value_head.state_dict(), f"{out_dir}/value_head.pt")
