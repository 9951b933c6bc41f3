"""The pipeline's eval stage in ``--world`` CPU processes (gloo), on a run dir whose base stage is done; run as a
script, never inside pytest. Each process writes nothing itself: the stage writes ``eval/`` on rank 0.

    python tests/scale/eval_dist_script.py --run-dir RUN --settings SETTINGS.json --world 2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _worker(rank: int, world: int, run_dir: str, settings: str, port: int) -> None:
    import torch
    import torch.distributed as dist

    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.pipeline.config import (
        BaseModelSettings,
        EnvSettings,
        EvalSettings,
        ProbeSettings,
        RLSettings,
        SFTSettings,
    )
    from prism_lit.pipeline.context import PipelineContext
    from prism_lit.pipeline.stages import evaluate
    from prism_lit.policy import EmbeddedModelSpec

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    s = json.loads(open(settings).read())
    env = EnvSettings(id="webshop", kwargs=s["env_kwargs"], protocol=AgentProtocol(**s["protocol"]),
                      eval_splits=s["eval_splits"])
    ctx = PipelineContext(run_dir=Path(run_dir), env=env,
                          base=BaseModelSettings(embedded=EmbeddedModelSpec(**s["embedded"])), probe=ProbeSettings(),
                          sft=SFTSettings(), rl=RLSettings(), eval=EvalSettings(**s["eval"]), seed=0, trainer={},
                          method="m")
    evaluate(ctx)
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--settings", required=True)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    if args.world == 1:
        _worker(0, 1, args.run_dir, args.settings, args.port)
    else:
        import torch.multiprocessing as mp

        mp.spawn(_worker, args=(args.world, args.run_dir, args.settings, args.port), nprocs=args.world)


if __name__ == "__main__":
    main()
