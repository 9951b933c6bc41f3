"""Fixtures of the reliability suite (helpers: reliability_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import DETERMINISTIC_ARTIFACTS, run_cli_subprocess, tiny_pipeline_args


@pytest.fixture(autouse=True)
def _error_logs_outside_the_tree(tmp_path_factory, monkeypatch):
    """The CLI writes tracebacks to $PRISM_LIT_LOG_DIR: keep them out of the directories the tests snapshot."""
    monkeypatch.setenv("PRISM_LIT_LOG_DIR", str(tmp_path_factory.getbasetemp() / "error_logs"))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The tiny pipeline run once, uninterrupted, through the real CLI (read-only: copy it with ``copy_run``)."""
    root = tmp_path_factory.mktemp("reference")
    run_dir = root / "run"
    result = run_cli_subprocess(tiny_pipeline_args(run_dir), cwd=root, timeout=600)
    assert result.code == 0, result.err[-4000:]
    for name in DETERMINISTIC_ARTIFACTS:
        assert (run_dir / name).is_file(), name
    return run_dir
