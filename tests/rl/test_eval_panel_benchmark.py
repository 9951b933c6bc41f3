"""benchmarks/eval_panel.py: a run's policy plays more positions of a split's fixed panel, each as the eval stage
would play it in a longer panel (the same task and env seed whatever slice it is played in), in the eval stage's
episode format, and never overwrites or silently replays the run's own panel."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rl_helpers import guess_word_run_dir

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "eval_panel.py"


def _run_dir(tmp_path, policy_dir):
    return guess_word_run_dir(tmp_path, policy_dir, env={"eval_splits": {"test": 2}},
                              eval={"max_steps": 3, "max_new_tokens": 4, "batch_size": 3})


def _play(run, out, *args):
    return subprocess.run([sys.executable, str(SCRIPT), str(run), "--policies", "base", "--out_dir", str(out),
                           *args], capture_output=True, text=True, check=False)


def test_a_position_plays_the_same_episode_in_any_slice(tmp_path, gw_policy_dir):
    run = _run_dir(tmp_path, gw_policy_dir)
    done = _play(run, tmp_path / "all", "--from_position", "0", "--to_position", "5", "--replay")
    assert done.returncode == 0, done.stderr
    done = _play(run, tmp_path / "tail", "--from_position", "2", "--to_position", "5")
    assert done.returncode == 0, done.stderr
    every = [json.loads(x) for x in (tmp_path / "all" / "eval" / "episodes.jsonl").read_text().splitlines()]
    tail = [json.loads(x) for x in (tmp_path / "tail" / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert [e["env_seed"] for e in every] == [0, 1, 2, 3, 4] and len({e["task_id"] for e in every}) == 5
    assert tail == every[2:]
    assert set(every[0]) >= {"policy", "split", "task_id", "env_seed", "task_type", "won", "score", "steps"}
    assert {(e["policy"], e["split"]) for e in every} == {("base", "test")}


@pytest.mark.parametrize("args, message", [
    (["--from_position", "1", "--to_position", "4"], "positions below 2 of 'test' are the run's own panel"),
    (["--from_position", "3", "--to_position", "3"], "need 0 <= from < to"),
    (["--from_position", "2", "--to_position", "100000"], "--to_position 100000: split 'test' has"),
    (["--from_position", "2", "--to_position", "4", "--policies", "final"], "--policies final"),
    (["--from_position", "2", "--to_position", "4", "--threads", "0"], "--threads 0: need at least 1"),
])
def test_bad_options_are_named_before_any_episode(tmp_path, gw_policy_dir, args, message):
    run = _run_dir(tmp_path, gw_policy_dir)
    done = _play(run, tmp_path / "out", *args)
    assert done.returncode != 0 and message in done.stderr
    assert not (tmp_path / "out" / "eval" / "episodes.jsonl").exists()


def test_an_existing_output_is_kept(tmp_path, gw_policy_dir):
    run = _run_dir(tmp_path, gw_policy_dir)
    out = tmp_path / "out" / "eval" / "episodes.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text("kept\n")
    done = _play(run, tmp_path / "out", "--from_position", "2", "--to_position", "4")
    assert done.returncode != 0 and "exists" in done.stderr and out.read_text() == "kept\n"
