"""Kill -9, Ctrl-C and SIGTERM at several moments of a small pipeline; resuming ends with artifacts byte-identical to an
uninterrupted run's (tests/reliability/tiny_pipeline.yaml, run through the real CLI; pausing_cli.py holds the
process at an exact point so the signal lands there, not wherever the scheduler happens to be)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_support import DETERMINISTIC_ARTIFACTS, digest, tiny_pipeline_args

PAUSING_CLI = Path(__file__).parent / "pausing_cli.py"

# (pause point, signal, the stage that must be left unfinished, the checkpoint it resumes from or None).
# base and SFT write their checkpoint only at the end of the stage today (test_pipeline_faults.py has the test
# for epoch checkpoints), so a kill there restarts the stage; RL checkpoints every iteration.
INTERRUPTIONS = [
    ("train:base:3", signal.SIGKILL, "base", None),  # mid epoch 2 of pre-training
    ("train:sft:4", signal.SIGINT, "sft", None),  # Ctrl-C mid epoch 2 of SFT
    ("export:sft", signal.SIGKILL, "sft", None),  # SFT trained, its export half-written
    ("train:rl:2", signal.SIGKILL, "rl", "rl/checkpoints/last.ckpt"),  # after RL iteration 2, iteration 1 saved
    # `kill PID` in the same place: it stops there and then (Lightning alone would only set a flag for the loop)
    ("train:rl:2", signal.SIGTERM, "rl", "rl/checkpoints/last.ckpt"),
    ("eval:1", signal.SIGINT, "eval", None),  # Ctrl-C after the base policy was evaluated
]


def start(run_dir: Path, where: str, flag: Path) -> subprocess.Popen:
    env = {**os.environ, "PRISM_LIT_TEST_PAUSE": where, "PRISM_LIT_TEST_PAUSED": str(flag)}
    return subprocess.Popen([sys.executable, str(PAUSING_CLI), *[str(a) for a in tiny_pipeline_args(run_dir)]],
                            cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, flag: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before its pause point:\n{err[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the pause point was never reached")
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_ctrl_c_and_sigterm_at_six_points_then_resume_to_identical_artifacts(finished_run, tmp_path):
    run = tmp_path / "run"
    logs = {}
    for i, (where, sig, stage, checkpoint) in enumerate(INTERRUPTIONS):
        flag = tmp_path / f"paused-{i}"
        proc = start(run, where, flag)
        wait_for(proc, flag)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        logs[where] = err
        assert proc.returncode != 0, f"{where}: a killed run must not exit 0"
        if sig in (signal.SIGINT, signal.SIGTERM):
            assert "Traceback" not in err, err[-3000:]
        if sig == signal.SIGTERM:
            assert proc.returncode == 143 and "stopped by SIGTERM" in err, (proc.returncode, err[-3000:])
        assert not (run / stage / "stage.json").exists(), f"{where}: {stage} must be left unfinished"
        if checkpoint is not None:
            assert (run / checkpoint).is_file(), f"{where}: {checkpoint} should be there to resume from"
        order = ["tasks", "base", "probe", "sft", "rl", "eval"]
        for done in order[: order.index(stage)]:
            assert (run / done / "stage.json").is_file(), f"{where}: {done} should have finished"

    result = subprocess.run([sys.executable, "-m", "prism_lit.cli", *map(str, tiny_pipeline_args(run))],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "stage eval   running" in result.stderr and "stage rl     done already" in result.stderr
    # the run after the RL kill resumed that stage (the one after the eval Ctrl-C re-ran eval, above)
    assert "stage rl     running (resumed" in logs["eval:1"], logs["eval:1"][-3000:]
    for name in DETERMINISTIC_ARTIFACTS:
        assert digest(run / name) == digest(finished_run / name), f"{name} differs from the uninterrupted run's"
    assert not [p for p in run.rglob(".*") if p.name.startswith((".export", ".model"))], "temporary folders left"
    report = json.loads((run / "report.json").read_text())
    assert set(report["stages"]) >= {"tasks", "base", "probe", "sft", "rl", "eval"}
