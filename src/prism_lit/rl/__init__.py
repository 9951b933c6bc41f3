"""The RL stage: multi-turn rollouts, advantage estimators, GRPO/REINFORCE and PPO LightningModules, evaluation."""

from prism_lit.rl.advantages import (
    compute_step_advantages,
    grpo_advantages,
    reinforce_advantages,
    rloo_advantages,
)
from prism_lit.rl.evaluation import EpisodeMetrics, evaluate_policy
from prism_lit.rl.ppo import PPOModule
from prism_lit.rl.reinforce import ReinforceModule
from prism_lit.rl.rollout import Episode, RolloutConfig, RolloutEngine, Step, group_tasks
from prism_lit.rl.tasks import EvalPanel, RLTaskDataModule, TaskStream

__all__ = [
    "Episode", "EpisodeMetrics", "EvalPanel", "PPOModule", "RLTaskDataModule", "ReinforceModule", "RolloutConfig",
    "RolloutEngine", "Step", "TaskStream", "compute_step_advantages", "evaluate_policy", "group_tasks",
    "grpo_advantages", "reinforce_advantages", "rloo_advantages",
]
