"""One LoRA SFT step under FSDP1 (``FullyShardedDataParallel`` + :class:`LoraAwareWrapPolicy`, ``use_orig_params``)
on 2 CPU processes, or in one process without FSDP; run as a script.

Lightning's ``FSDPStrategy`` refuses CPU, but torch's FSDP1 runs on CPU with gloo, so this wraps the
``SFTModule`` the way ``FSDPStrategy`` does (the LightningModule is the FSDP root) and drives one step by hand.
It writes ``<root>/export`` (adapter, gathered on rank 0 by ``export_sharded_policy``) and
``<root>/checkpoint_keys.json`` (the state-dict keys ``SFTModule.on_save_checkpoint`` keeps for an adapter-only
checkpoint).

    python tests/scale/fsdp1_lora_script.py --policy DIR --data FILE --root OUT --world-size 2
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def one_step(rank: int, args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.distributed import LoraAwareWrapPolicy, export_sharded_policy, gather_full_state_dict
    from prism_lit.policy import LoraSpec, PolicySpec, export_policy
    from prism_lit.sft import SFTModule

    torch.set_num_threads(1)
    distributed = args.world_size > 1
    if distributed:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
        dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    torch.manual_seed(0)
    module = SFTModule(policy=PolicySpec(path=args.policy, lora=LoraSpec(r=4, alpha=8)))
    module.configure_model()
    data = TrajectoryDataModule(train_files=[args.data], batch_size=8, bucket=False, seed=0)
    data.tokenizer = module.tokenizer
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    share = len(batch["input_ids"]) // args.world_size
    rows = slice(rank * share, (rank + 1) * share)

    root = module
    if distributed:
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = FullyShardedDataParallel(module, auto_wrap_policy=LoraAwareWrapPolicy(), use_orig_params=True,
                                        device_id=torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in root.parameters() if p.requires_grad], lr=1e-2)
    loss = root(batch["input_ids"][rows], batch["attention_mask"][rows], batch["labels"][rows]).loss
    loss.backward()
    optimizer.step()

    out = os.path.join(args.root, "export")
    if distributed:
        export_sharded_policy(root, module.model, module.tokenizer, out)
        checkpoint = {"state_dict": gather_full_state_dict(root)}
    else:
        export_policy(module.model, module.tokenizer, out)
        checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    if rank == 0:
        with open(os.path.join(args.root, "checkpoint_keys.json"), "w") as fh:
            json.dump(sorted(checkpoint["state_dict"]), fh)
    if distributed:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="rendezvous port (0: a free one)")
    args = parser.parse_args(argv)
    if args.port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    if args.world_size == 1:
        one_step(0, args)
    else:
        import torch.multiprocessing as mp

        mp.spawn(one_step, args=(args,), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
