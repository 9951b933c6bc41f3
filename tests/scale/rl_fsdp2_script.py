"""One RL iteration (one optimizer step) on the guess-word env under 1 process or FSDP2 on CPU; run as a script,
never inside pytest (``ModelParallelStrategy`` re-launches ``sys.argv``).

Rollouts are made independent of how tasks fall on ranks: each task's group is played on its own, sampling with a
generator seeded from the task id, so 2 ranks × 2 tasks play exactly the episodes of 1 process × 4 tasks. Every
episode is one env step (``max_attempts: 1``) and the loss is ``seq-mean-token-mean``, so each rank's loss has the
same denominator and FSDP2's average over ranks is the single process's loss. Writes ``<root>/export`` (the trained
policy or adapter, gathered on rank 0) and ``<root>/rank<r>.json`` (tasks played, micro-batches run per minibatch).

    python tests/scale/rl_fsdp2_script.py --policy DIR --root OUT --devices 2 [--lora] [--algo ppo]
"""

from __future__ import annotations

import argparse
import json
import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--devices", type=int, default=1, help="1: one process; more: FSDP2 over gloo")
    parser.add_argument("--tasks-per-batch", type=int, default=4, help="per rank")
    parser.add_argument("--lora", action="store_true",
                        help="LoRA, no KL/entropy: zero-advantage steps are skipped, so ranks run unequal micro-batch "
                             "counts and the short one is padded")
    parser.add_argument("--algo", choices=["grpo", "ppo"], default="grpo")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--salt", type=int, default=0, help="added to the per-task sampling seeds")
    parser.add_argument("--max-steps", type=int, default=1)
    parser.add_argument("--checkpoint", action="store_true",
                        help="FSDP2: a sharded (DCP) checkpoint directory <root>/ckpt/last.ckpt after each step")
    parser.add_argument("--resume", default=None, help="a checkpoint to resume from")
    args = parser.parse_args(argv)

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from prism_lit.distributed import FSDP2Strategy
    from prism_lit.envs.guess_word import GUESS_WORD_ID
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.policy import LoraSpec, PolicySpec
    from prism_lit.rl import GRPOModule, PPOModule, RLTaskDataModule, RolloutConfig

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    base = GRPOModule if args.algo == "grpo" else PPOModule

    class TaskSeeded(base):
        """Each task's group played alone with a generator seeded by the task id; micro-batch counts recorded."""

        played: list[str] = []
        signal: list[str] = []  # tasks whose group has a nonzero advantage
        micro_counts: list[int] = []

        def rollout(self, batch):
            episodes = []
            for k, task in enumerate(batch["task_ids"]):
                seed = zlib.crc32(task.encode()) + args.salt
                generator = torch.Generator(device=self.device).manual_seed(seed)
                episodes += self.train_engine().run(self.model, [(task, seed % 1000, k)] * self.group_size,
                                                    generator=generator)
                self.played.append(task)
            return episodes

        def build_samples(self, episodes):
            samples = super().build_samples(episodes)
            self.signal += sorted({e.task_id for e, s in zip(episodes, samples) if s.advantage != 0.0})
            return samples

        def micro_batches(self, samples):
            out = super().micro_batches(samples)
            self.micro_counts.append(len(out))
            return out

    protocol = AgentProtocol(env="guess_word", reply_format="bare", system_prompt="Guess the word .",
                             show_admissible=False)
    regularised = not args.lora
    # PPO: advantages not normalised over the buffer (a per-rank statistic under any strategy)
    kwargs = {"advantage": "grpo", "skip_zero_advantage": not regularised} if args.algo == "grpo" else \
        {"norm_adv": False}
    module = TaskSeeded(
        policy=PolicySpec(path=args.policy, lora=LoraSpec(r=4, alpha=8) if args.lora else None),
        protocol=protocol, env_id=GUESS_WORD_ID, env_kwargs={"max_attempts": 1},
        rollout=RolloutConfig(max_new_tokens=3), group_size=args.group_size,
        optim={"lr": 1e-3, "max_grad_norm": 1e-3},  # always clipped (norms 4e-3 to 0.26)
        update={"micro_batch_size": 3, "loss_agg": "seq-mean-token-mean", "epochs": 1, "num_minibatches": 1},
        kl={"coef": 0.1 if regularised else 0.0}, entropy_coef=0.01 if regularised else 0.0,
        export_dir=os.path.join(args.root, "export"), **kwargs,
    )
    data = RLTaskDataModule(env_id=GUESS_WORD_ID, env_kwargs={"max_attempts": 1},
                            tasks_per_batch=args.tasks_per_batch, seed=0)
    strategy = FSDP2Strategy(process_group_backend="gloo", save_distributed_checkpoint=True) \
        if args.devices > 1 else "auto"
    callbacks = [ModelCheckpoint(os.path.join(args.root, "ckpt"), save_last=True)] if args.checkpoint else []
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=args.max_steps,
                        logger=False, enable_checkpointing=args.checkpoint, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=args.root)
    trainer.fit(module, data, ckpt_path=args.resume)
    with open(os.path.join(args.root, f"rank{trainer.global_rank}.json"), "w") as fh:
        json.dump({"world_size": trainer.world_size, "tasks": module.played, "signal": module.signal, "micro_batches": module.micro_counts,
                   "sharded": module._fsdp is not None, "global_step": trainer.global_step,
                   "iteration": module.iteration,
                   "grad_norm": float(trainer.callback_metrics.get("train/grad_norm", float("nan")))}, fh)


if __name__ == "__main__":
    main()
