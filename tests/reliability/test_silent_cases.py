"""Runs that would succeed while doing less than asked say so: truncated trajectories are a WARNING with their count
and ids, ``lr: 0`` warns that nothing will change, a warm-up longer than the run warns."""

from __future__ import annotations

import logging
from pathlib import Path

from reliability_support import run_cli
from test_bad_inputs import FIXTURE, Env


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_truncation_is_a_warning_with_the_count_and_the_ids(tmp_path, tiny_policy_dir, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="prism_lit")
    env = Env(tmp_path, Path(tiny_policy_dir))
    n = sum(1 for line in FIXTURE.read_text().splitlines() if line.strip())
    result = run_cli(["fit", "--config", env.fit_config(max_length=100)])
    assert result.code == 0, result.err[-3000:]
    text = _warnings(caplog)
    assert f"truncated {n} of {n} trajectories to max_length=100" in text, text
    assert "'fx-0', 'fx-1'" in text and f"and {n - 10} more" in text
    assert "their final turns are not trained" in text and "Raise max_length above" in text


def test_zero_learning_rate_warns_that_nothing_changes(tmp_path, tiny_policy_dir, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="prism_lit")
    env = Env(tmp_path, Path(tiny_policy_dir))
    result = run_cli(["fit", "--config", env.fit_config(), "--model.init_args.lr", "0",
                      "--model.init_args.warmup_steps", "5"])
    assert result.code == 0, result.err[-3000:]
    text = _warnings(caplog)
    assert "lr (model.init_args.lr) is 0" in text and "leaves the weights unchanged" in text, text
    assert "warmup_steps=5 is not below the 1 optimizer steps" in text, text
