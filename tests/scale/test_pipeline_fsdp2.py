"""``prism-lit pipeline`` with the RL stage under FSDP2 over 2 CPU processes (gloo), from the config's
``trainer.strategy`` given as a ``class_path``, launched with ``torchrun`` as on a cluster (every rank runs the
pipeline). Oracle: the stage's record names the strategy and the world size, both ranks stop at the same
iteration, and the exported policy is the SFT policy moved by the updates (finite, every weight there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # one torchrun of 2 processes (~25 s on a busy 2-core CPU)

FSDP2 = {"class_path": "prism_lit.distributed.FSDP2Strategy",
         "init_args": {"process_group_backend": "gloo", "save_distributed_checkpoint": False}}

TINY_MODEL = {"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "intermediate_size": 64}


def tiny_env(eval_goals: int) -> dict:
    return {"id": "webshop", "kwargs": {"num_products": 60, "results_per_page": 3}, "eval_splits": {"test": eval_goals},
            "protocol": {"env": "webshop", "numbered_actions": True, "number_pattern": r"^click\[b0"},
            "expert_kwargs": {"query": "short"}}


def test_pipeline_rl_stage_runs_under_fsdp2_from_the_trainer_section(tmp_path):
    from safetensors.torch import load_file

    from prism_lit.cli import main
    from prism_lit.pipeline.run import read_stage_marker

    run = tmp_path / "run"
    config = {  # JSON is YAML: a pipeline config file
        "run_dir": str(run),
        "env": tiny_env(eval_goals=2),
        "base": {"embedded": TINY_MODEL, "pretrain_tasks": 8, "pretrain_epochs": 1},
        "probe": {"corpus_tasks": 8, "batch_size": 4},
        "sft": {"epochs": 1, "batch_size": 4},
        # full fine-tuning with an entropy and a KL term (a sharded reference copy): the weights move whatever
        # the rewards of the untrained policy
        "rl": {"module": {"class_path": "prism_lit.rl.GRPOModule",
                          "init_args": {"group_size": 2, "optim": {"lr": 1e-3}, "entropy_coef": 0.01,
                                        "kl": {"coef": 0.1}, "rollout": {"max_new_tokens": 6, "max_steps": 2}}},
               "data": {"tasks_per_batch": 1}, "max_steps": 2},
        "eval": {"policies": ["final"], "max_steps": 2, "batch_size": 2, "max_new_tokens": 6},
        "trainer": {"enable_progress_bar": False},
    }
    (tmp_path / "pipeline.yaml").write_text(json.dumps(config))
    (tmp_path / "fsdp2.yaml").write_text(json.dumps({"trainer": {"enable_progress_bar": False, "accelerator": "cpu",
                                                                  "devices": 2, "strategy": FSDP2}}))
    main(["pipeline", "--config", str(tmp_path / "pipeline.yaml"), "--stop_after=sft"])  # one process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "prism_lit.cli", "pipeline", "--config", str(tmp_path / "pipeline.yaml"),
               "--config", str(tmp_path / "fsdp2.yaml"), "--stop_after=rl"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-6000:]
    info = read_stage_marker(run, "rl")["info"]
    assert info["trained"] and info["strategy"] == "FSDP2Strategy" and info["world_size"] == 2
    assert info["steps"] == info["iterations"] == 2
    start = load_file(run / "sft" / "export" / "model.safetensors")
    trained = load_file(run / "rl" / "export" / "model.safetensors")
    assert sorted(trained) == sorted(start)
    assert all(v.isfinite().all() for v in trained.values())
    assert max((trained[k] - start[k]).abs().max().item() for k in trained) > 1e-6
    recorded = json.loads((run / "pipeline_config.json").read_text())["trainer"]["strategy"]
    assert recorded["class_path"] == FSDP2["class_path"]


def test_whole_pipeline_from_an_empty_run_dir_under_torchrun(tmp_path):
    """Every stage under torchrun, from nothing: both ranks run the tasks stage, the base's initial weights and
    copy warm-up are built once by rank 0 and loaded by rank 1, base, SFT and RL train under DDP over 2 processes,
    evaluation is sharded, and rank 0 writes the records and the report."""
    from prism_lit.pipeline.run import read_stage_marker

    run = tmp_path / "run"
    config = {
        "run_dir": str(run),
        "env": tiny_env(eval_goals=4),
        "base": {"embedded": TINY_MODEL, "pretrain_tasks": 8, "pretrain_epochs": 1, "copy_warmup_steps": 4},
        "probe": {"corpus_tasks": 8, "batch_size": 4},
        "sft": {"epochs": 1, "batch_size": 2},
        "rl": {"module": {"class_path": "prism_lit.rl.GRPOModule",
                          "init_args": {"group_size": 2, "optim": {"lr": 1e-3},
                                        "rollout": {"max_new_tokens": 6, "max_steps": 2}}},
               "data": {"tasks_per_batch": 1}, "max_steps": 2},
        "eval": {"policies": ["base", "final"], "max_steps": 2, "batch_size": 2, "max_new_tokens": 6},
        "trainer": {"enable_progress_bar": False, "accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    }
    (tmp_path / "pipeline.yaml").write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "prism_lit.cli", "pipeline", "--config", str(tmp_path / "pipeline.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-6000:]
    assert (run / "base" / "warm" / "warmup.json").is_file() and (run / "report.json").is_file()
    for stage in ("base", "sft", "rl"):
        assert read_stage_marker(run, stage)["info"].get("steps", 0) > 0 or stage == "rl"
    episodes = [json.loads(line) for line in (run / "eval" / "episodes.jsonl").read_text().splitlines()]
    # the 4-goal panel was split over the two ranks and gathered: every goal once per policy
    assert sorted((e["policy"], e["task_id"]) for e in episodes) == sorted(
        {(e["policy"], e["task_id"]) for e in episodes}) and len(episodes) == 8
    assert not list(run.rglob(".*.tmp")) and not (run / "replaced").exists()
