"""benchmarks/pass_at_k.py: the share of GRPO groups with a gradient is the combinatorics it claims, and a run
directory's policy samples k episodes of every panel game, reproducibly, on the real env."""

import importlib.util
import json
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest
from rl_helpers import guess_word_run_dir

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "pass_at_k.py"
_spec = importlib.util.spec_from_file_location("pass_at_k", SCRIPT)
pass_at_k = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pass_at_k)


def test_a_group_has_a_gradient_only_when_its_returns_differ():
    assert pass_at_k.mixed_group_chance(0, 8, 4) == 0.0  # never won: every group all zeros
    assert pass_at_k.mixed_group_chance(8, 8, 4) == 0.0  # always won: every group all ones
    assert pass_at_k.mixed_group_chance(4, 8, 4) == pytest.approx(1 - 2 / comb(8, 4))
    assert pass_at_k.mixed_group_chance(1, 8, 4) == pytest.approx(4 / 8)  # the one win is drawn half the time
    with pytest.raises(ValueError, match="group size 5"):
        pass_at_k.mixed_group_chance(1, 4, 5)


def test_summary_rows_per_type_and_all():
    table = pass_at_k.summarize({"a": ("heat", 0), "b": ("pick", 8), "c": ("pick", 2)}, k=8, group_size=4,
                                n_boot=200)
    assert list(table) == ["heat", "pick", "all"] and table["all"]["games"] == 3
    assert table["heat"]["pass_at_k"]["mean"] == 0.0 and table["pick"]["pass_at_k"]["mean"] == 1.0
    assert table["pick"]["sampled_success"]["mean"] == pytest.approx((1.0 + 0.25) / 2)
    assert table["all"]["mixed_groups"]["mean"] == pytest.approx(pass_at_k.mixed_group_chance(2, 8, 4) / 3)


def _run_dir(tmp_path, policy_dir):
    rollout = {"temperature": 1.0, "max_steps": 3}
    return guess_word_run_dir(tmp_path, policy_dir, rl={"module": {"init_args": {"group_size": 2, "rollout": rollout}}},
                              eval={"max_steps": 3, "max_new_tokens": 4})


def test_samples_k_episodes_of_every_game_reproducibly(tmp_path, gw_policy_dir):
    run = _run_dir(tmp_path, gw_policy_dir)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        subprocess.run([sys.executable, str(SCRIPT), str(run), "--games", "3", "--k", "4", "--batch_size", "5",
                        "--out", str(out)], check=True, capture_output=True, text=True)
        outs.append(json.loads(out.read_text()))
    result = outs[0]
    assert (result["k"], result["group_size"], result["temperature"], result["max_steps"]) == (4, 2, 1.0, 3)
    assert len(result["wins"]) == 3 and all(0 <= w["wins"] <= 4 for w in result["wins"].values())
    assert result["table"]["all"]["games"] == 3
    assert result["wins"] == outs[1]["wins"]  # the sampling generator is seeded


def test_a_policy_the_run_lacks_is_named(tmp_path, gw_policy_dir):
    run = _run_dir(tmp_path, gw_policy_dir)
    done = subprocess.run([sys.executable, str(SCRIPT), str(run), "--policy", "final"], capture_output=True,
                          text=True, check=False)
    assert done.returncode != 0 and "--policy final" in done.stderr and "rl/export" in done.stderr


@pytest.mark.parametrize("args, message", [(["--games", "0"], "--games 0: must be at least 1"),
                                           (["--k", "1"], "--k 1: needs at least --group_size (2"),
                                           (["--games", "100000"], "--games 100000: split 'train' of guess_word has")])
def test_bad_options_are_named_before_any_episode(tmp_path, gw_policy_dir, args, message):
    run = _run_dir(tmp_path, gw_policy_dir)
    done = subprocess.run([sys.executable, str(SCRIPT), str(run), "--out", str(tmp_path / "x.json"), *args],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and message in done.stderr and not (tmp_path / "x.json").exists()
