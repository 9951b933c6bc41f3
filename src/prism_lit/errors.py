"""The project's error types: bad input, reported by the CLI as one paragraph (what, where, how to fix).

Every class is also a ``ValueError`` (or ``FileNotFoundError``), so code that catches those keeps working. Raise
them with a message that names the file, line, field or option at fault, and pass ``hint`` for the way out::

    raise ConfigError("sft.batch_size must be >= 1, got -4", hint="pass --sft.batch_size 4")

``prism-lit`` prints ``prism-lit <command>: error: <message> <hint>`` and exits with status 1; the traceback is
written to a log file and printed only with ``--debug`` (or ``PRISM_LIT_DEBUG=1``). See docs/failure_modes.md.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


class PrismLitError(Exception):
    """Base class: bad input or a bad artifact that the user can fix. ``hint`` says how; ``exit_code`` is the CLI's
    exit status for it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(PrismLitError, ValueError):
    """A setting or command-line option is invalid (the message names the option)."""


class UsageError(ConfigError):
    """A command line or config file that cannot be parsed (exit status 2, like the parser's own errors)."""

    exit_code = 2


class DataError(PrismLitError, ValueError):
    """Input data (trajectories, partitions) is invalid (the message names the file and line or field)."""


class ModelError(PrismLitError, ValueError):
    """A model or tokenizer directory is missing files or holds a damaged one (the message names the path)."""


class CheckpointError(PrismLitError, ValueError):
    """A training checkpoint cannot be resumed from (the message names it and the command to discard it)."""


class ArtifactError(PrismLitError, ValueError):
    """A run directory holds an artifact that is damaged or does not belong to this config."""


class MissingFileError(PrismLitError, FileNotFoundError):
    """A file or directory named by a setting does not exist."""


def is_user_error(err: BaseException) -> bool:
    """Errors that report bad input rather than a bug: the project's own, ``ValueError`` (bad values, including
    jsonargparse's and the readers'), missing or unreadable files, and Lightning's misconfiguration errors."""
    if isinstance(err, (PrismLitError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError)):
        return True
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, MisconfigurationException)


def error_log_dir() -> Path:
    """Where the CLI writes tracebacks: ``$PRISM_LIT_LOG_DIR``, else ``<prism_lit cache>/logs``."""
    override = os.environ.get("PRISM_LIT_LOG_DIR")
    if override:
        return Path(override).expanduser()
    from prism_lit.envs.alfworld.cache import cache_root

    return cache_root() / "logs"


def write_error_log(err: BaseException, argv: list[str]) -> Path | None:
    """The traceback of ``err`` and the command line, in a new file of :func:`error_log_dir` (None if unwritable)."""
    try:
        folder = error_log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        path.write_text(f"prism-lit {' '.join(argv)}\ncwd: {os.getcwd()}\n\n{text}", encoding="utf-8")
        return path
    except OSError:
        return None


def _one_paragraph(text: str) -> str:
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def root_error(err: BaseException) -> BaseException:
    """The error that says what is wrong: jsonargparse wraps an error raised while it builds a class (``Does not
    validate against any of the Union subtypes ...``) with the original as ``__cause__``."""
    seen: set[int] = set()
    while (not isinstance(err, PrismLitError) and err.__cause__ is not None and id(err) not in seen
           and is_user_error(err.__cause__)):
        seen.add(id(err))
        err = err.__cause__
    return err


def format_error(err: BaseException) -> str:
    """The message the CLI prints: the root error's own text, with the file name for a bare OS error."""
    err = root_error(err)
    message = _usage_message(str(err))
    if isinstance(err, OSError) and not isinstance(err, PrismLitError) and err.filename and \
            str(err.filename) not in message:
        message = f"{err.filename}: {message}"
    if not isinstance(err, PrismLitError) and not message:
        message = type(err).__name__
    return message


def report_error(err: BaseException, command: str | None, argv: list[str], debug: bool) -> int:
    """Print ``err`` as one paragraph on stderr (and its traceback when ``debug``); the exit status to use."""
    prog = f"prism-lit {command}" if command else "prism-lit"
    log_path = write_error_log(err, argv)
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"{prog}: error: {format_error(err)}", file=sys.stderr)
    if not debug:
        where = f" (written to {log_path})" if log_path else ""
        print(f"The traceback{where} is printed with --debug.", file=sys.stderr)
    return getattr(root_error(err), "exit_code", 1)


def _usage_message(text: str) -> str:
    """jsonargparse's message in one paragraph; when a union (``class_path`` or ``None``) failed, only the
    class_path's own problem (``Parser key "data": Problem with given class_path '...': Parser key "batch_size":
    Expected a <class 'int'>. Got value: x``), not the list of subtypes it tried."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if any("Does not validate against any of the Union subtypes" in line for line in lines):
        starts = [i for i, line in enumerate(lines) if line.strip().startswith("- Problem with given class_path")]
        if len(starts) == 1:
            i = starts[0]
            indent = len(lines[i]) - len(lines[i].lstrip())
            block = [lines[i].strip()[2:]]
            for line in lines[i + 1:]:
                if len(line) - len(line.lstrip()) <= indent:
                    break
                block.append(line.strip())
            return f"{lines[0].strip()} {' '.join(block)}"
    return _one_paragraph(text)


def report_usage_error(err: BaseException, command: str | None, debug: bool,
                       other_commands: tuple[str, ...] = ()) -> int:
    """A command line or config file the parser rejects: its message and where the options are listed."""
    prog = f"prism-lit {command}" if command else "prism-lit"
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    message = _usage_message(str(err))
    if command is None and "subcommand" in message and other_commands:
        message += f" Other commands: {', '.join(other_commands)}."
    print(f"{prog}: error: {message} ({prog} --help lists the options.)", file=sys.stderr)
    return 2


class Terminated(BaseException):
    """SIGTERM (``kill PID``, ``docker stop``, a scheduler's pre-emption), raised where the process is, as Ctrl-C
    raises ``KeyboardInterrupt``. Lightning's own SIGTERM handling only sets a flag that its loop reads after the
    current batch, which for an RL iteration is minutes of rollouts."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def stop_on_sigterm() -> Any:
    """Make SIGTERM stop this process as Ctrl-C does: the run's finished artifacts and checkpoints are kept (every
    write is atomic) and the same command resumes. Lightning keeps this handler: it calls it after its own.
    Returns the handler it replaced (``None`` off the main thread, where nothing is changed)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def report_interrupt(command: str | None, terminated: bool = False) -> int:
    """The one line for Ctrl-C (exit 130) or SIGTERM (exit 143, the shell's 128 + 15)."""
    prog = f"prism-lit {command}" if command else "prism-lit"
    again = ("run the same command again to resume" if command in ("pipeline", "compare") else
             "nothing half-written is left")
    how = "stopped by SIGTERM" if terminated else "interrupted"
    print(f"{prog}: {how}. Finished artifacts are kept; {again} (docs/failure_modes.md).", file=sys.stderr)
    return 143 if terminated else 130


__all__ = [
    "ArtifactError", "CheckpointError", "ConfigError", "DataError", "MissingFileError", "ModelError",
    "PrismLitError", "Terminated", "UsageError", "format_error", "is_user_error", "report_error", "report_interrupt",
    "stop_on_sigterm",
]
