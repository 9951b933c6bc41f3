"""benchmarks/paired_by_group.py: the paired differences a gate is read from (docs/results.md §1, ALFWorld's
confirmatory test) — overall, per group, run by run — and the panel mismatch it refuses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "paired_by_group.py"


def _episodes(run_dir: Path, policy: str, wins: dict[str, list[int]]) -> None:
    """``wins[task_type]``: won (1/0) for that type's goals, in panel order."""
    rows, seed = [], 0
    for task_type, outcomes in wins.items():
        for i, won in enumerate(outcomes):
            rows.append({"policy": policy, "split": "valid_seen", "task_id": f"{task_type}/{i}", "env_seed": seed,
                         "task_type": task_type, "won": bool(won), "score": float(won), "steps": 5, "invalid": 0})
            seed += 1
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "0", "1", "--split", "valid_seen", "--familiar", "heat",
         "--policy", f"base={tmp_path}/base:base", f"rl={tmp_path}/rl/seed{{seed}}:final", "--pairs", "rl:base",
         "--bootstrap", "200", *extra], capture_output=True, text=True)


def test_differences_overall_per_group_and_by_run(tmp_path):
    _episodes(tmp_path / "base", "base", {"heat": [0, 0, 0, 0], "clean": [1, 1, 0, 0]})
    _episodes(tmp_path / "rl" / "seed0", "final", {"heat": [1, 1, 0, 0], "clean": [1, 1, 0, 0]})  # +50 / 0
    _episodes(tmp_path / "rl" / "seed1", "final", {"heat": [1, 1, 1, 1], "clean": [1, 0, 0, 0]})  # +100 / −25
    out = _run(tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    pooled = next(line for line in lines if line.startswith("| rl − base | +75.0"))
    cells = [c.strip() for c in pooled.strip("|").split("|")]
    assert cells[2].startswith("-12.5") and cells[3].startswith("+87.5") and cells[4].startswith("+31.2")
    assert "| rl − base | 0 | +50.0 | +0.0 | +25.0 |" in lines
    assert "| rl − base | 1 | +100.0 | -25.0 | +37.5 |" in lines


def test_a_run_on_another_panel_is_refused(tmp_path):
    _episodes(tmp_path / "base", "base", {"heat": [0, 0], "clean": [1, 0]})
    _episodes(tmp_path / "rl" / "seed0", "final", {"heat": [1, 0], "clean": [1, 0]})
    _episodes(tmp_path / "rl" / "seed1", "final", {"heat": [1, 0, 1], "clean": [1, 0]})
    out = _run(tmp_path)
    assert out.returncode != 0 and "rl seed 1: another panel" in out.stderr


@pytest.mark.parametrize("extra, message", [
    (["--pairs", "rl:nope"], "--pairs 'rl:nope'"),
    (["--seeds", "0", "7"], "seed7/eval/episodes.jsonl: not found"),
])
def test_bad_arguments_are_named_before_any_work(tmp_path, extra, message):
    _episodes(tmp_path / "base", "base", {"heat": [0, 0], "clean": [1, 0]})
    _episodes(tmp_path / "rl" / "seed0", "final", {"heat": [1, 0], "clean": [1, 0]})
    out = _run(tmp_path, *extra)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr
