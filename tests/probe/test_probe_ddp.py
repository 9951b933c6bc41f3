"""The probe on 2 DDP processes (CPU, gloo) gives the same records and partition as on 1 process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prism_lit.probe import load_partition, read_probe_records

from conftest import TINY_TRAJECTORIES

SCRIPT = Path(__file__).with_name("ddp_probe_script.py")


def run_script(policy_dir, run_dir, devices):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(policy_dir), str(TINY_TRAJECTORIES), str(run_dir), str(devices)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"probe done world_size={devices}" in proc.stdout


@pytest.mark.slow
def test_two_process_probe_equals_one_process(tiny_policy_dir, tmp_path):
    run_script(tiny_policy_dir, tmp_path / "one", 1)
    run_script(tiny_policy_dir, tmp_path / "two", 2)
    one, two = load_partition(tmp_path / "one" / "partition.json"), load_partition(tmp_path / "two" / "partition.json")
    assert json.loads((tmp_path / "two" / "probe_meta.json").read_text())["world_size"] == 2
    assert one == two and len(one.rl_ids) == 12
    a = read_probe_records(tmp_path / "one" / "probe.jsonl")
    b = read_probe_records(tmp_path / "two" / "probe.jsonl")
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 24  # each trajectory exactly once
    for x, y in zip(a, b):
        assert y.norms == pytest.approx(x.norms, rel=1e-6) and y.gini == pytest.approx(x.gini, rel=1e-6)
