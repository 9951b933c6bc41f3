"""RL under DDP (2 CPU processes, gloo): tasks are sharded without duplicates or losses, and panel metrics are
gathered across ranks. Oracle: the same run in one process (with the global batch: 2 ranks × 2 tasks = 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("rl_ddp_script.py")

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


def run(policy: Path, root: Path, *args: str) -> Path:
    root.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--policy", str(policy), "--root", str(root), *args],
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
