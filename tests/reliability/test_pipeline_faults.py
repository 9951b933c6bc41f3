"""The pipeline never reports success for work it did not do: settings are checked before the first stage,
``--rerun`` retrains from scratch, a stage that trains nothing or RL on evaluation goals is an error, and a stage's
own errors print as one paragraph like every other bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_support import copy_run, digest, run_cli, snapshot, tiny_pipeline_args

PAUSING_CLI = Path(__file__).parent / "pausing_cli.py"


# ---------------------------------------------------------------------------------------------- checked up front

# Each must fail before the first stage runs: non-zero exit, the option named, no run directory written.
EARLY = [
    (["--sft.batch_size", "-4"], "sft.batch_size"),
    (["--sft.lr", "-1"], "sft.lr"),
    (["--sft.epochs", "0"], "sft.epochs"),
    (["--probe.router.init_args.rl_fraction", "1.5"], "rl_fraction"),
    (["--probe.router.class_path", "prism_lit.probe.routers.NoSuchRouter"], "NoSuchRouter"),
    (["--rl.module.init_args.group_sise", "4"], "group_sise"),
    (["--eval.max_new_tokens", "0"], "eval.max_new_tokens"),
    (["--eval.batch_size", "0"], "eval.batch_size"),
    (["--env.eval_splits", "{nosuch: 3}"], "nosuch"),
    (["--env.train_split", "test"], "train_split"),  # the corpus and RL would come from an evaluation split
    (["--base.path", "/nonexistent/model"], "base.path"),
    (["--rl.data", "{tasks_per_batch: 0}"], "tasks_per_batch"),
]


def _id(param) -> str:
    args = param.values[0] if hasattr(param, "values") else param[0]
    return args[0].lstrip("-")


@pytest.mark.parametrize("args,option", EARLY, ids=[_id(p) for p in EARLY])
def test_bad_setting_fails_before_the_first_stage(args, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    start = time.monotonic()
    result = run_cli(tiny_pipeline_args(run, *args))
    assert result.code != 0, result.text[-3000:]
    assert option in result.err, result.err[-3000:]
    assert "running" not in result.err, "a stage started before the setting was checked"
    assert not run.exists(), "the run directory was written"
    assert time.monotonic() - start < 60


def test_stage_errors_print_one_paragraph_without_traceback(tmp_path, monkeypatch):
    """The pipeline's own error types are the CLI's bad-input errors (prism_lit.errors.PrismLitError)."""
    from prism_lit.errors import is_user_error
    from prism_lit.pipeline.stages import StageError

    assert is_user_error(StageError("x"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("prism_lit.pipeline.run.check_before_run", _raise_stage_error)
    result = run_cli(tiny_pipeline_args(tmp_path / "run"))
    assert result.code == 1 and "Traceback" not in result.err and ": error: stage says no" in result.err


def _raise_stage_error(*args, **kwargs):
    from prism_lit.pipeline.stages import StageError

    raise StageError("stage says no")


# ---------------------------------------------------------------------------------------------- --rerun
@pytest.mark.slow
def test_rerun_with_a_changed_setting_retrains_and_changes_the_weights(finished_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = copy_run(finished_run, tmp_path / "run")
    old_sft = digest(run / "sft" / "export" / "model.safetensors")
    kept = {name: digest(run / name) for name in ("tasks/corpus.jsonl", "base/model/model.safetensors",
                                                   "probe/partition.json")}
    result = run_cli(tiny_pipeline_args(run, "--rerun", "[sft]", "--sft.lr", "5e-4"))
    assert result.code == 0, result.err[-4000:]
    marker = json.loads((run / "sft" / "stage.json").read_text())
    assert marker["settings"]["sft"]["lr"] == 5e-4 and marker["info"]["steps"] > 0
    assert digest(run / "sft" / "export" / "model.safetensors") != old_sft
    assert digest(run / "rl" / "export" / "model.safetensors") != digest(finished_run / "rl" / "export" /
                                                                         "model.safetensors")
    assert {name: digest(run / name) for name in kept} == kept  # the stages before sft were reused as they were
    moved = list((run / "replaced").glob("sft-*/export/model.safetensors"))
    assert [digest(p) for p in moved] == [old_sft], "the old SFT stage is moved aside, not deleted"


# ---------------------------------------------------------------------------------------------- nothing trained
def _back_to_probe(finished_run: Path, dest: Path) -> Path:
    """The finished run with the stages after the probe undone (as if it had stopped there)."""
    run = copy_run(finished_run, dest)
    for stage in ("sft", "rl", "eval", "report"):
        subprocess.run(["rm", "-rf", str(run / stage)], check=True)
    return run


def _edit_partition(run: Path, change) -> None:
    path = run / "probe" / "partition.json"
    partition = json.loads(path.read_text())
    change(partition)
    path.write_text(json.dumps(partition))


@pytest.mark.slow
def test_partition_ids_not_in_the_corpus_stop_sft_instead_of_a_zero_step_success(finished_run, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _back_to_probe(finished_run, tmp_path / "run")

    def ghosts(p):
        p["sft_ids"] = ["ghost-0", "ghost-1"]
        p["task_of"].update({"ghost-0": "webshop/train/1", "ghost-1": "webshop/train/2"})
        p["task_type_of"].update({"ghost-0": "beauty", "ghost-1": "food"})

    _edit_partition(run, ghosts)
    result = run_cli(tiny_pipeline_args(run))
    assert result.code != 0, result.err[-3000:]
    assert "ghost-0" in result.err and "partition.json" in result.err
    assert not (run / "sft" / "stage.json").exists() and not (run / "sft" / "export").exists()


@pytest.mark.slow
def test_rl_tasks_from_the_evaluation_split_are_an_error(finished_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _back_to_probe(finished_run, tmp_path / "run")

    def to_test_split(p):
        p["task_of"] = {k: v.replace("/train/", "/test/") if k in p["rl_ids"] else v for k, v in p["task_of"].items()}

    _edit_partition(run, to_test_split)
    result = run_cli(tiny_pipeline_args(run, "--sft.enabled", "false"))
    assert result.code != 0, result.err[-3000:]
    assert "webshop/test/" in result.err
    assert not (run / "rl" / "stage.json").exists() and not (run / "rl" / "export").exists()


@pytest.mark.slow
def test_cut_off_stage_record_is_an_error_not_a_silent_rerun(finished_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = copy_run(finished_run, tmp_path / "run")
    marker = run / "probe" / "stage.json"
    marker.write_text(marker.read_text()[:40])
    before = snapshot(run)
    result = run_cli(tiny_pipeline_args(run))
    assert result.code != 0 and str(marker) in result.err and "--rerun" in result.err, result.err[-3000:]
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------- mid-stage resume
@pytest.mark.slow
def test_killed_sft_stage_resumes_from_its_last_epoch(finished_run, tmp_path):
    run = _back_to_probe(finished_run, tmp_path / "run")
    flag = tmp_path / "paused"
    env = {**os.environ, "PRISM_LIT_TEST_PAUSE": "train:sft:4", "PRISM_LIT_TEST_PAUSED": str(flag)}
    proc = subprocess.Popen([sys.executable, str(PAUSING_CLI), *map(str, tiny_pipeline_args(run))], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert flag.exists()
    assert (run / "sft" / "checkpoints" / "last.ckpt").is_file(), "no epoch checkpoint to resume SFT from"
