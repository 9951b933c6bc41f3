"""Helpers of the reliability suite: the CLI run in-process or as a subprocess, file snapshots, the tiny pipeline."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
TINY_PIPELINE = HERE / "tiny_pipeline.yaml"

# The artifacts of a pipeline run that must come out byte-identical whether or not the run was interrupted
# (stage.json / report.json hold wall-clock seconds, TensorBoard files hold timestamps).
DETERMINISTIC_ARTIFACTS = (
    "tasks/corpus.jsonl", "tasks/pretrain.jsonl", "base/model/model.safetensors", "base/model/tokenizer.json",
    "probe/probe.jsonl", "probe/partition.json", "sft/export/model.safetensors", "rl/export/model.safetensors",
    "eval/eval.json",
)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(args: list[str]) -> CliResult:
    """``prism-lit ARGS`` through :func:`prism_lit.cli.main` in this process (what the console script calls)."""
    from prism_lit.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            if isinstance(exc.code, str):
                err.write(exc.code)
                code = 1
            else:
                code = int(exc.code or 0)
        except Exception:  # what the interpreter does with an uncaught exception: traceback, exit status 1
            traceback.print_exc(file=err)
            code = 1
    return CliResult(code, out.getvalue(), err.getvalue())


def cli_command(args: list[str]) -> list[str]:
    """The real console entry point, as a subprocess command line (``python -m prism_lit.cli`` = ``prism-lit``)."""
    return [sys.executable, "-m", "prism_lit.cli", *[str(a) for a in args]]


def run_cli_subprocess(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> CliResult:
    proc = subprocess.run(cli_command(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (symlinks by target)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny_pipeline_args(run_dir: Path, *extra: str) -> list[str]:
    return ["pipeline", "--config", str(TINY_PIPELINE), "--run_dir", str(run_dir), *extra]


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, symlinks=True)
    return dest
