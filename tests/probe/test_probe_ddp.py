"""The probe on 2 CPU processes (gloo; DDP and FSDP2) gives the same records and partition as on 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prism_lit.probe import load_partition, read_probe_records

TINY_TRAJECTORIES = Path(__file__).parents[1] / "fixtures" / "tiny_trajectories.jsonl"

SCRIPT = Path(__file__).with_name("ddp_probe_script.py")


def run_script(policy_dir, run_dir, devices, strategy="ddp"):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(policy_dir),
            str(TINY_TRAJECTORIES),
            str(run_dir),
            str(devices),
            strategy,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"probe done world_size={devices} global_step=0" in proc.stdout


@pytest.fixture(scope="module")
def one_process(tiny_policy_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("probe_one")
    run_script(tiny_policy_dir, run_dir, 1)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_process_probe_equals_one_process(tiny_policy_dir, one_process, tmp_path, strategy):
    run_script(tiny_policy_dir, tmp_path, 2, strategy)
    assert json.loads((tmp_path / "probe_meta.json").read_text())["world_size"] == 2
    one, two = load_partition(one_process / "partition.json"), load_partition(tmp_path / "partition.json")
    assert one == two and len(one.rl_ids) == 12
    a = read_probe_records(one_process / "probe.jsonl")
    b = read_probe_records(tmp_path / "probe.jsonl")
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 24  # each trajectory exactly once
    for x, y in zip(a, b):
        assert y.norms == pytest.approx(x.norms, rel=1e-6) and y.gini == pytest.approx(x.gini, rel=1e-6)
