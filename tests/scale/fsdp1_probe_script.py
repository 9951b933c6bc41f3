"""The probe under FSDP1 on 2 CPU processes, routed through the root FSDP unit as the probe callback routes it.

Lightning's ``FSDPStrategy`` refuses CPU, so this wraps the ``SFTModule`` the way ``FSDPStrategy`` does (the
LightningModule is the FSDP root, decoder layers are units, ``use_orig_params``) and calls
:func:`~prism_lit.probe.callback.fsdp1_root_runner` with a stand-in trainer holding the root and Lightning's own
forward redirection. Each rank probes its half of one batch twice (the second probe checks FSDP's state was reset
after the first backward), then takes one training step through the root (FSDP still trains after the probe).
Writes ``<root>/norms_rank<r>.pt``: {"rows", "first", "second", "loss"}.

    python tests/scale/fsdp1_probe_script.py --policy DIR --data FILE --root OUT [--lora] [--checkpointing]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(rank: int, args: argparse.Namespace) -> None:
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from lightning.pytorch.strategies.strategy import _ForwardRedirection
    from torch.distributed.fsdp import FullyShardedDataParallel

    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.distributed import LoraAwareWrapPolicy
    from prism_lit.policy import LoraSpec, PolicySpec
    from prism_lit.probe.callback import fsdp1_root_runner
    from prism_lit.probe.unit_norms import measure_unit_grad_norms
    from prism_lit.sft import SFTModule

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    module = SFTModule(policy=PolicySpec(path=args.policy, lora=LoraSpec(r=4, alpha=8) if args.lora else None))
    module.configure_model()
    data = TrajectoryDataModule(train_files=[args.data], batch_size=8, bucket=False, seed=0)
    data.tokenizer = module.tokenizer
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    rows = list(range(rank * 4, rank * 4 + 4))
    mine = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "labels")}
    root = FullyShardedDataParallel(module, auto_wrap_policy=LoraAwareWrapPolicy(), use_orig_params=True,
                                    device_id=torch.device("cpu"))
    trainer = SimpleNamespace(strategy=SimpleNamespace(model=root, _forward_redirection=_ForwardRedirection()))
    runner = fsdp1_root_runner(trainer, module)
    assert runner is not None
    results = [measure_unit_grad_norms(module.model, mine, run_forward=runner, logits_chunk_tokens=5,
                                       activation_checkpointing=args.checkpointing) for _ in range(2)]
    assert all(p.grad is None for p in root.parameters()), "the probe accumulated a parameter gradient"
    optimizer = torch.optim.AdamW([p for p in root.parameters() if p.requires_grad], lr=1e-2)
    loss = root(mine["input_ids"], mine["attention_mask"], mine["labels"]).loss
    loss.backward()
    optimizer.step()
    torch.save({"rows": rows, "first": results[0].norms, "second": results[1].norms, "loss": results[0].loss,
                "train_loss": float(loss)}, os.path.join(args.root, f"norms_rank{rank}.pt"))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    import socket

    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args(argv)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        args.port = sock.getsockname()[1]
    mp.spawn(run, args=(args,), nprocs=2, join=True)


if __name__ == "__main__":
    main()
