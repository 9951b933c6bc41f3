"""RL under DDP and FSDP2 (2 CPU processes, gloo): tasks are sharded without duplicates or losses, panel metrics are
gathered across ranks, and one FSDP2 update gives the single process's weights. Oracle: the same run in one process
(with the global batch: 2 ranks × 2 tasks = 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("rl_ddp_script.py")
FSDP2_SCRIPT = Path(__file__).with_name("rl_fsdp2_script.py")
ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.slow  # two script runs, one of them with 2 processes (~15-40 s on a busy 2-core CPU)


@pytest.fixture(scope="module")
def gw_policy(tmp_path_factory):
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.policy import EmbeddedModelSpec
    from prism_lit.rl.toy import build_word_level_policy, guess_word_corpus

    protocol = AgentProtocol(env="guess_word", reply_format="bare", system_prompt="Guess the word .",
                             show_admissible=False)
    spec = EmbeddedModelSpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                             intermediate_size=128, max_position_embeddings=512, seed=0)
    return build_word_level_policy(tmp_path_factory.mktemp("gw") / "policy", guess_word_corpus(protocol), spec)


def run(policy: Path, root: Path, *args: str, script: Path = SCRIPT) -> Path:
    root.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), "--policy", str(policy), "--root", str(root), *args],
                            check=False, capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-6000:]
    return root


@pytest.fixture(scope="module")
def runs(gw_policy, tmp_path_factory):
    root = tmp_path_factory.mktemp("rl_ddp")
    single = run(gw_policy, root / "single", "--devices", "1", "--tasks-per-batch", "4")
    ddp = run(gw_policy, root / "ddp", "--devices", "2", "--tasks-per-batch", "2")
    return single, ddp


def played(run_dir: Path, rank: int) -> list[dict]:
    data = json.loads((run_dir / f"played_rank{rank}.json").read_text())
    return data["batches"]


def test_each_epoch_plays_every_task_once_across_ranks(runs):
    single, ddp = runs
    all_tasks = {t for b in played(single, 0) for t in b["task_ids"]}
    assert len(all_tasks) == 8  # the guess-word train split
    rank0, rank1 = played(ddp, 0), played(ddp, 1)
    assert len(rank0) == len(rank1)  # equal step counts, or DDP would hang
    for epoch in (0, 1):
        seen = Counter(t for b in rank0 + rank1 if b["epoch"] == epoch for t in b["task_ids"])
        assert set(seen) == all_tasks and set(seen.values()) == {1}, (epoch, seen)
    # step k of the 2-rank run plays exactly the tasks of step k of the 1-process run (same global batch)
    for a, b, one in zip(rank0, rank1, played(single, 0), strict=True):
        assert sorted(a["task_ids"] + b["task_ids"]) == sorted(one["task_ids"])
        assert a["epoch"] == b["epoch"] == one["epoch"]
    assert not set(rank0[0]["task_ids"]) & set(rank1[0]["task_ids"])


def test_panel_metrics_are_gathered_across_ranks(runs):
    single, ddp = runs
    one = json.loads((single / "val.json").read_text())
    two = json.loads((ddp / "val.json").read_text())
    assert one["test/panel/episodes"] == two["test/panel/episodes"] == 8  # each rank played only 4
    assert two == pytest.approx(one)


def test_ranks_with_unequal_buffers_do_not_deadlock(gw_policy, tmp_path):
    """skip_zero_advantage drops different numbers of steps per rank; every rank must still take the same number of
    optimizer updates (each all-reduces), or DDP hangs. The subprocess timeout turns a hang into a failure."""
    root = run(gw_policy, tmp_path / "skip", "--devices", "2", "--tasks-per-batch", "2", "--skip-zero-advantage")
    assert played(root, 0) and played(root, 1)


def max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("mode, args", [
    ("full", []),  # full fine-tuning, KL (a sharded reference copy) and entropy terms
    ("lora", ["--lora", "--group-size", "8"]),  # zero-advantage steps skipped: one rank runs only padding
    ("ppo", ["--algo", "ppo", "--group-size", "8"]),  # a value head outside the sharded model
])
def test_fsdp2_update_matches_one_process(gw_policy, tmp_path, mode, args):
    """One RL iteration (rollout, one optimizer step, export) under FSDP2 with 2 processes gives the weights of
    1 process with the same global batch and the same episodes (seeded per task), to fp32 rounding."""
    import torch
    from safetensors.torch import load_file

    single = run(gw_policy, tmp_path / "single", "--devices", "1", "--tasks-per-batch", "4", *args,
                 script=FSDP2_SCRIPT)
    fsdp = run(gw_policy, tmp_path / "fsdp2", "--devices", "2", "--tasks-per-batch", "2", *args, script=FSDP2_SCRIPT)
    one = json.loads((single / "rank0.json").read_text())
    ranks = [json.loads((fsdp / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["sharded"] and r["world_size"] == 2 and r["global_step"] == 1 for r in ranks)
    assert sorted(ranks[0]["tasks"] + ranks[1]["tasks"]) == sorted(one["tasks"])
    assert sorted(ranks[0]["signal"] + ranks[1]["signal"]) == sorted(one["signal"])  # the same episodes
    for r in ranks:  # one norm over the sharded (and PPO's replicated) gradients, that of the single process
        assert r["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    file = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    trained, sharded = load_file(single / "export" / file), load_file(fsdp / "export" / file)
    assert max_difference(trained, sharded) < 1e-5
    if mode == "lora":  # lora_B starts at 0
        assert max(v.abs().max().item() for k, v in trained.items() if "lora_B" in k) > 1e-4
        counts = [r["micro_batches"][0] for r in ranks]
        assert min(counts) == 0 < max(counts)  # the rank without a signal ran zero-weight micro-batches only
    else:
        start = load_file(gw_policy / "model.safetensors")
        assert max((trained[k] - start[k]).abs().max().item() for k in trained) > 1e-4
    if mode == "ppo":
        heads = [torch.load(run_dir / "export" / "value_head.pt") for run_dir in (single, fsdp)]
        assert max_difference(*heads) < 1e-6 and heads[0]["weight"].abs().max() > 1e-4


@pytest.mark.parametrize("mode, args", [
    ("full", []),  # full fine-tuning with a KL term: a sharded reference
    ("lora", ["--lora", "--group-size", "8"]),  # the checkpoint holds the adapter only, not the frozen base
])
def test_fsdp2_sharded_checkpoint_resumes_like_an_uninterrupted_run(gw_policy, tmp_path, mode, args):
    """A sharded (DCP) checkpoint after step 1, resumed to step 2, gives the weights of 2 steps without
    interruption (task stream, sampling generator and optimizer state restored)."""
    from safetensors.torch import load_file

    two = ["--devices", "2", "--tasks-per-batch", "2", *args]
    file = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    whole = run(gw_policy, tmp_path / "whole", *two, "--max-steps", "2", script=FSDP2_SCRIPT)
    first = run(gw_policy, tmp_path / "first", *two, "--checkpoint", script=FSDP2_SCRIPT)
    last = first / "ckpt" / "last.ckpt"
    assert last.is_dir() and list(last.glob("*.distcp"))  # one shard file per rank
    resumed = run(gw_policy, tmp_path / "resumed", *two, "--max-steps", "2", "--resume", str(last),
                  script=FSDP2_SCRIPT)
    for r in (0, 1):
        done = json.loads((resumed / f"rank{r}.json").read_text())
        assert done["global_step"] == done["iteration"] == 2 and len(done["tasks"]) == 2  # played step 2 only
    weights = [load_file(d / "export" / file) for d in (whole, resumed, first)]
    assert max_difference(weights[0], weights[1]) < 1e-5
    assert max_difference(weights[0], weights[2]) > 1e-4  # step 2 moved the weights


def test_shipped_fsdp2_config_runs_through_the_cli(gw_policy, tmp_path):
    """configs/scale/rl_grpo_fsdp2_cpu.yaml through ``prism-lit fit`` (2 processes), with the tiny policy swapped in:
    training, evaluation between iterations, a checkpoint, the export, and a resume from the checkpoint."""
    import yaml

    override = {
        "trainer": {"max_steps": 2, "val_check_interval": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "cli"}}},
        "model": {"init_args": {"policy": {"path": str(gw_policy)}, "group_size": 4,
                                "export_dir": str(tmp_path / "export")}},
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    fit = [sys.executable, "-m", "prism_lit.cli", "fit", "--config",
           str(ROOT / "configs" / "scale" / "rl_grpo_fsdp2_cpu.yaml"), "--config", str(tmp_path / "override.yaml")]
    result = subprocess.run(fit, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-6000:]
    last = tmp_path / "runs" / "cli" / "version_0" / "checkpoints" / "last.ckpt"
    assert (tmp_path / "export" / "model.safetensors").is_file()
    resumed = subprocess.run([*fit, "--trainer.max_steps", "3", "--ckpt_path", str(last)], check=False,
                             capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr
