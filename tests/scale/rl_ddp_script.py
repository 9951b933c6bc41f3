"""RL (GRPO on the guess-word env) under 1 process or DDP on CPU; run as a script, never inside pytest.

First a greedy evaluation (``trainer.test``) of the untrained policy on a fixed panel (rank 0 writes
``<root>/val.json``: the panel metrics as logged, i.e. after the cross-rank reduction), then ``--epochs`` epochs of training. Every rank
writes ``<root>/played_rank<r>.json``: the task ids of each training batch it played, with the epoch.

    python tests/scale/rl_ddp_script.py --policy DIR --root OUT --devices 2
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tasks-per-batch", type=int, default=2, help="per rank")
    parser.add_argument("--skip-zero-advantage", action="store_true",
                        help="the module's default; under DDP a rank whose groups are all equal then skips the "
                             "gradient all-reduce its peers enter (a hang, reported)")
    args = parser.parse_args(argv)

    import lightning as L
    import torch

    from prism_lit.envs.guess_word import GUESS_WORD_ID
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.policy import PolicySpec
    from prism_lit.rl import EvalPanel, GRPOModule, RLTaskDataModule, RolloutConfig

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)

    class PlayedTasks(L.Callback):
        def __init__(self) -> None:
            self.batches: list[dict] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.batches.append({"epoch": trainer.current_epoch, "task_ids": list(batch["task_ids"])})

        def on_fit_end(self, trainer, pl_module) -> None:
            path = os.path.join(args.root, f"played_rank{trainer.global_rank}.json")
            with open(path, "w") as fh:
                json.dump({"world_size": trainer.world_size, "batches": self.batches}, fh)

    protocol = AgentProtocol(env="guess_word", reply_format="bare", system_prompt="Guess the word .",
                             show_admissible=False)
    module = GRPOModule(policy=PolicySpec(path=args.policy), protocol=protocol, env_id=GUESS_WORD_ID,
                        rollout=RolloutConfig(max_new_tokens=3, max_steps=3), group_size=2, optim={"lr": 1e-3},
                        update={"micro_batch_size": 8}, skip_zero_advantage=args.skip_zero_advantage)
    data = RLTaskDataModule(env_id=GUESS_WORD_ID, tasks_per_batch=args.tasks_per_batch, seed=0,
                            eval_panels=[EvalPanel(name="panel", num_tasks=None, seed=7)], eval_batch_size=3)
    strategy = "auto"
    if args.devices > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_epochs=args.epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=args.root, callbacks=[PlayedTasks()])
    metrics = trainer.test(module, data, verbose=False)[0]  # the same panel code as validation
    if trainer.is_global_zero:
        with open(os.path.join(args.root, "val.json"), "w") as fh:
            json.dump({k: float(v) for k, v in metrics.items()}, fh)
    trainer.fit(module, data)


if __name__ == "__main__":
    main()
