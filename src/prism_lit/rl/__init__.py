"""The RL stage: multi-turn rollouts, the RL iteration with algorithm hooks (GRPO family, PPO), advantage
estimators, the task DataModule, evaluation."""

from prism_lit.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    compute_step_advantages,
    grpo_advantages,
    register_advantage,
    reinforce_advantages,
    rloo_advantages,
)
from prism_lit.rl.base import RLModuleBase
from prism_lit.rl.config import EvalConfig, KLConfig, OptimConfig, UpdateConfig
from prism_lit.rl.evaluation import EpisodeMetrics, evaluate_policy
from prism_lit.rl.grpo import GRPOModule
from prism_lit.rl.losses import Minibatch
from prism_lit.rl.ppo import PPOModule
from prism_lit.rl.reinforce import ReinforceModule
from prism_lit.rl.rollout import Episode, RolloutConfig, RolloutEngine, Step, group_tasks
from prism_lit.rl.scoring import PolicyOutput, StepSample, TokenBatch
from prism_lit.rl.tasks import EvalPanel, RLTaskDataModule, TaskStream

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AdvantageInputs", "Episode", "EpisodeMetrics", "EvalConfig", "EvalPanel", "GRPOModule",
    "KLConfig", "Minibatch", "OptimConfig", "PPOModule", "PolicyOutput", "RLModuleBase", "RLTaskDataModule",
    "ReinforceModule", "RolloutConfig", "RolloutEngine", "Step", "StepSample", "TaskStream", "TokenBatch",
    "UpdateConfig", "compute_step_advantages", "evaluate_policy", "group_tasks", "grpo_advantages",
    "register_advantage", "reinforce_advantages", "rloo_advantages",
]
