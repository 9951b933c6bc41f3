"""GRPO and PPO take a randomly initialised tiny policy from near-chance to > 80 % success on guess-word."""

import lightning.pytorch as pl
import pytest

from prism_lit.envs.guess_word import GUESS_WORD_ID
from prism_lit.policy import PolicySpec
from prism_lit.rl import GRPOModule, PPOModule, RLTaskDataModule, RolloutConfig, evaluate_policy

TASKS = [f"guess_word/train/{i}" for i in range(8)]
PANEL = TASKS * 4  # every task with 4 different env seeds (candidate orders)
SEEDS = list(range(100, 132))


class StopWhenSolved(pl.Callback):
    """Stop once the sampled rollouts succeed >= 90 % three iterations in a row and the greedy policy wins > 80 % of
    the panel (greedy can lag sampling by a few iterations, by how much depends on the CPU's arithmetic); keep the
    sampled success curve."""

    def __init__(self, greedy):
        self.greedy = greedy
        self.curve = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.curve.append(float(trainer.callback_metrics["rollout/success"]))
        if len(self.curve) >= 3 and min(self.curve[-3:]) >= 0.9 and self.greedy() > 0.8:
            trainer.should_stop = True


def _greedy_success(module, protocol):
    return evaluate_policy(module.model, module.tokenizer, protocol, GUESS_WORD_ID, {}, PANEL, SEEDS,
                           max_new_tokens=3, batch_size=32)["success_rate"]


def _learn(module, protocol, max_steps):
    module.configure_model()
    before = _greedy_success(module, protocol)
    stop = StopWhenSolved(lambda: _greedy_success(module, protocol))
    trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         accelerator="cpu", callbacks=[stop])
    trainer.fit(module, RLTaskDataModule(GUESS_WORD_ID, tasks_per_batch=8, seed=0))
    return before, stop.curve, _greedy_success(module, protocol)


@pytest.mark.slow
def test_grpo_learns_guess_word_from_random_init(gw_policy_dir, gw_protocol):
    module = GRPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol, env_id=GUESS_WORD_ID,
                        rollout=RolloutConfig(max_new_tokens=3), group_size=16, advantage="grpo",
                        optim={"lr": 3e-3}, update={"micro_batch_size": 64})
    before, curve, after = _learn(module, gw_protocol, max_steps=200)
    print(f"GRPO: greedy {before:.2f} -> {after:.2f}; sampled {curve[0]:.2f} -> {curve[-1]:.2f} in {len(curve)} it")
    assert before < 0.2 and curve[0] < 0.2, (before, curve[:3])
    assert after > 0.8, (after, curve)


@pytest.mark.slow
def test_ppo_learns_guess_word_from_random_init(gw_policy_dir, gw_protocol):
    module = PPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol, env_id=GUESS_WORD_ID,
                       rollout=RolloutConfig(max_new_tokens=3), group_size=16, optim={"lr": 3e-3}, value_lr=1e-2,
                       update={"epochs": 2, "num_minibatches": 1, "micro_batch_size": 64}, entropy_coef=0.01)
    before, curve, after = _learn(module, gw_protocol, max_steps=400)
    print(f"PPO: greedy {before:.2f} -> {after:.2f}; sampled {curve[0]:.2f} -> {curve[-1]:.2f} in {len(curve)} it")
    assert before < 0.2 and curve[0] < 0.2, (before, curve[:3])
    assert after > 0.8, (after, curve)
