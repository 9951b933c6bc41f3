"""Run a probe-only fit (real SFTModule + DataModule + GradientConcentrationProbe) on N CPU processes.

Launched by tests/probe/test_probe_ddp.py as a subprocess, because strategy="ddp" re-launches sys.argv:

    python tests/probe/ddp_probe_script.py POLICY_DIR TRAJECTORIES RUN_DIR DEVICES [ddp|fsdp2]
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(policy_dir: str, trajectories: str, run_dir: str, devices: int, strategy: str = "ddp") -> None:
    import lightning as L
    import torch

    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.policy import PolicySpec
    from prism_lit.probe import GradientConcentrationProbe, PrismRouter
    from prism_lit.sft import SFTModule

    torch.set_num_threads(1)  # the ranks share two cores
    torch.manual_seed(0)
    if devices == 1:
        chosen = "auto"
    elif strategy == "fsdp2":
        from prism_lit.distributed import FSDP2Strategy

        chosen = FSDP2Strategy()
    else:
        from lightning.pytorch.strategies import DDPStrategy

        chosen = DDPStrategy(process_group_backend="gloo")
    module = SFTModule(policy=PolicySpec(path=policy_dir), export_dir=os.path.join(run_dir, "export"))
    data = TrajectoryDataModule(
        train_files=[trajectories], batch_size=3, partition_path=os.path.join(run_dir, "partition.json")
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=devices,
        strategy=chosen,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[GradientConcentrationProbe(router=PrismRouter("gini"), output_dir=run_dir)],
    )
    trainer.fit(module, data)
    if trainer.is_global_zero:
        print(f"probe done world_size={trainer.world_size} global_step={trainer.global_step}")


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:])
