"""One writer per run dir: a second ``prism-lit pipeline`` or ``compare`` on a run dir that a running pipeline
holds stops at once, names the holder and changes nothing; the lock goes with its process, even after ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from reliability_support import TINY_PIPELINE, run_cli_subprocess, snapshot, tiny_pipeline_args
from test_kill_resume import start, wait_for

from prism_lit.pipeline.lock import LOCK_FILE, RunDirInUse, holder, run_dir_lock

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prism_lit.pipeline.lock import run_dir_lock
    with run_dir_lock(Path(sys.argv[1])):
        Path(sys.argv[2]).write_text("held")
        time.sleep(600)
""")


def hold_in_another_process(run_dir: Path, flag: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(flag)])
    wait_for(proc, flag, timeout=60)
    return proc


def test_the_lock_names_its_holder_and_goes_with_its_process(tmp_path):
    run_dir = tmp_path / "run"
    assert holder(run_dir) is None and not run_dir.exists(), "asking must not create the run dir"
    proc = hold_in_another_process(run_dir, tmp_path / "held")
    try:
        info = holder(run_dir)
        assert info is not None and info["pid"] == proc.pid and "-c" in info["command"]
        with pytest.raises(RunDirInUse, match=rf"in use by process {proc.pid} on .*Nothing was changed"):
            with run_dir_lock(run_dir):
                pytest.fail("the body must not run while another process holds the lock")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert holder(run_dir) is None, "the kernel releases an flock when its process dies"
    with run_dir_lock(run_dir):  # and this process can take it now
        assert holder(run_dir) is None or holder(run_dir)["pid"] == os.getpid()
    assert (run_dir / LOCK_FILE).is_file()


@pytest.mark.slow
def test_a_second_pipeline_or_compare_on_a_running_run_dir_stops_before_changing_anything(tmp_path):
    run = tmp_path / "run"
    flag = tmp_path / "paused"
    first = start(run, "train:base:3", flag)  # the real CLI, paused mid pre-training
    try:
        wait_for(first, flag)
        before = snapshot(run)

        second = run_cli_subprocess(tiny_pipeline_args(run), cwd=tmp_path)
        assert second.code == 1, second.text[-3000:]
        assert f"run_dir {run} is in use by process {first.pid}" in second.err, second.err[-3000:]
        assert "Traceback" not in second.err

        # compare over an out_dir whose shared corpus and base another process is building: stops at its checks
        out = tmp_path / "compare"
        shared = out / "shared" / "all"
        shared.parent.mkdir(parents=True)
        os.symlink(run, shared)
        third = run_cli_subprocess(["compare", "--configs", f"[{TINY_PIPELINE}]", "--seeds", "[0]",
                                    "--out_dir", str(out)], cwd=tmp_path)
        assert third.code == 1 and f"is in use by process {first.pid}" in third.err, third.err[-3000:]
        assert snapshot(run) == before, "the refused commands changed the run dir"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # killed with -9, the first run left its lock file behind but not its lock: the same command resumes
    resumed = run_cli_subprocess(tiny_pipeline_args(run, "--stop_after", "base"), cwd=tmp_path, timeout=600)
    assert resumed.code == 0, resumed.err[-3000:]
    assert (run / "base" / "stage.json").is_file()
