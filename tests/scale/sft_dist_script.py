"""SFT on CPU under one process, DDP or FSDP2 (ModelParallelStrategy); run as a script, never inside pytest.

``strategy: ddp`` re-launches ``sys.argv``, so the tests start this file with ``python`` in a subprocess. It
writes ``<root>/export`` (the trained model/adapter, gathered on rank 0 under FSDP), ``<root>/ckpt/last.ckpt``
and ``<root>/result.json`` (rank 0: global step, world size, strategy).

    python tests/scale/sft_dist_script.py --policy DIR --data FILE --root OUT --strategy ddp --devices 2
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", required=True, help="tiny HF model directory")
    parser.add_argument("--data", required=True, help="trajectory JSONL")
    parser.add_argument("--root", required=True, help="output directory")
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp2"], default="single")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="per-rank batch size")
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--precision", default="32-true", help="Trainer precision, e.g. bf16-mixed")
    parser.add_argument("--fsdp-param-dtype", default=None, help="fsdp2: MixedPrecisionPolicy param dtype")
    parser.add_argument("--fsdp-reduce-dtype", default=None, help="fsdp2: MixedPrecisionPolicy reduce dtype")
    parser.add_argument("--resume", default=None, help="checkpoint to resume from")
    parser.add_argument("--distributed-checkpoint", action="store_true",
                        help="fsdp2: one shard file per rank (a directory) instead of one full file")
    return parser.parse_args(argv)


def build_strategy(args: argparse.Namespace):
    if args.strategy == "single":
        return "auto"
    if args.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend="gloo")
    from prism_lit.distributed import FSDP2Strategy

    return FSDP2Strategy(save_distributed_checkpoint=args.distributed_checkpoint, param_dtype=args.fsdp_param_dtype,
                         reduce_dtype=args.fsdp_reduce_dtype)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.policy import LoraSpec, PolicySpec
    from prism_lit.sft import SFTModule

    torch.set_num_threads(1)  # two ranks share two cores
    L.seed_everything(0, verbose=False)
    policy = PolicySpec(path=args.policy, lora=LoraSpec(r=4, alpha=8) if args.lora else None,
                        gradient_checkpointing=args.gradient_checkpointing)
    module = SFTModule(policy=policy, lr=args.lr, export_dir=os.path.join(args.root, "export"))
    # plain (unbucketed) batches in a seeded order: batch k of size 2B is batches 2k and 2k+1 of size B, and the
    # distributed sampler hands batch 2k to rank 0 and 2k+1 to rank 1, so the global batch is the same
    data = TrajectoryDataModule(train_files=[args.data], batch_size=args.batch_size, bucket=False, seed=0)
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy=build_strategy(args), max_epochs=args.max_epochs,
        precision=args.precision,
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=args.root,
        reload_dataloaders_every_n_epochs=1,  # a resumed run then sees the same epoch order as a continuous one
        callbacks=[ModelCheckpoint(dirpath=os.path.join(args.root, "ckpt"), save_last=True, save_top_k=0)],
    )
    trainer.fit(module, data, ckpt_path=args.resume)
    if trainer.is_global_zero:
        result = {"global_step": trainer.global_step, "world_size": trainer.world_size, "strategy": args.strategy,
                  "epoch": trainer.current_epoch, "param_dtypes": sorted({str(p.dtype) for p in module.parameters()})}
        with open(os.path.join(args.root, "result.json"), "w") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main()
