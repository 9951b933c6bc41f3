"""A probe-only fit under FSDP2 (``FSDP2Strategy``) on N CPU processes, with the probe's memory bounds; a script.

    python tests/scale/fsdp2_probe_script.py POLICY DATA RUN_DIR DEVICES [--checkpointing] [--chunk N]
        [--param-dtype bfloat16] [--lora]

``--checkpointing`` loads the policy with gradient checkpointing, which the probe follows (each layer recomputed
in its backward); ``--chunk`` is the probe's logits chunk; ``--param-dtype`` FSDP2's mixed precision. Writes the
probe's files to RUN_DIR.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("policy")
    parser.add_argument("data")
    parser.add_argument("run_dir")
    parser.add_argument("devices", type=int)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--param-dtype", default=None)
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()

    import lightning as L
    import torch

    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.distributed import FSDP2Strategy
    from prism_lit.policy import LoraSpec, PolicySpec
    from prism_lit.probe import GradientConcentrationProbe, PrismRouter
    from prism_lit.sft import SFTModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    strategy = FSDP2Strategy(param_dtype=args.param_dtype, reduce_dtype="float32" if args.param_dtype else None)
    policy = PolicySpec(path=args.policy, gradient_checkpointing=args.checkpointing,
                        lora=LoraSpec(r=4, alpha=8) if args.lora else None)
    module = SFTModule(policy=policy, export_dir=os.path.join(args.run_dir, "export"))
    data = TrajectoryDataModule(train_files=[args.data], batch_size=3, bucket=False, seed=0,
                                partition_path=os.path.join(args.run_dir, "partition.json"))
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", devices=args.devices, strategy=strategy, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=args.run_dir, reload_dataloaders_every_n_epochs=1,
        callbacks=[GradientConcentrationProbe(router=PrismRouter("gini"), output_dir=args.run_dir,
                                              logits_chunk_tokens=args.chunk)],
    )
    trainer.fit(module, data)
    if trainer.is_global_zero:
        print(f"probe done world_size={trainer.world_size}")


if __name__ == "__main__":
    main()
