"""GRPO under 2-process DDP (gloo, CPU): ranks play disjoint tasks and keep identical weights."""

import json

import lightning.pytorch as pl
import pytest

from prism_lit.envs.guess_word import GUESS_WORD_ID
from prism_lit.policy import PolicySpec
from prism_lit.rl import GRPOModule, RLTaskDataModule, RolloutConfig


class DumpPerRank(pl.Callback):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        weights = {n: p.detach().sum().item() for n, p in pl_module.named_parameters() if p.requires_grad}
        with open(f"{self.out_dir}/rank{trainer.global_rank}.jsonl", "a") as fh:
            fh.write(json.dumps({"tasks": batch["task_ids"], "weights": weights}) + "\n")


@pytest.mark.slow
def test_two_ranks_shard_tasks_and_stay_in_sync(tmp_path, gw_policy_dir, gw_protocol):
    module = GRPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol, env_id=GUESS_WORD_ID,
                        env_kwargs={"max_attempts": 1}, rollout=RolloutConfig(max_new_tokens=2), group_size=4,
                        optim={"lr": 1e-2}, entropy_coef=0.01, skip_zero_advantage=False,
                        update={"micro_batch_size": 4, "epochs": 2, "minibatch_size": 8})
    data = RLTaskDataModule(GUESS_WORD_ID, env_kwargs={"max_attempts": 1}, tasks_per_batch=2, seed=3)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[DumpPerRank(str(tmp_path))])
    trainer.fit(module, data)
    ranks = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 2 iterations x (2 epochs x 1 minibatch of 8 steps)
    for a, b in zip(*ranks):
        assert not set(a["tasks"]) & set(b["tasks"])  # each task on one rank only
        for name, value in a["weights"].items():  # gradients were averaged: same weights everywhere
            assert b["weights"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    first_epoch = [t for r in ranks for rec in r[:2] for t in rec["tasks"]]
    assert len(first_epoch) == len(set(first_epoch))
