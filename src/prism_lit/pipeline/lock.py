"""One writer per run dir: ``prism-lit pipeline`` holds an exclusive lock on ``<run_dir>/run.lock`` while it runs.

Two processes given the same run dir (a second terminal, two ``compare`` calls over one ``out_dir``, a job
resubmitted while the first still runs) would otherwise both train the same stage and overwrite each other's
checkpoints and markers. The lock is an ``flock`` on an open file, so the kernel releases it when its process ends
in any way, ``kill -9`` included: there is never a stale lock to delete by hand. The file keeps the holder's PID,
host, start time and command line for the error the second process prints; it is left in place afterwards
(removing a lock file while another process may be opening it is what makes lock files race).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prism_lit.errors import PrismLitError

LOCK_FILE = "run.lock"

log = logging.getLogger(__name__)


class RunDirInUse(PrismLitError, RuntimeError):
    """Another process holds the run dir's lock (the message names its PID, host and command)."""


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds the run dir's lock (``{"pid", "host", "started", "command"}``, as much as it wrote), ``None``
    when nobody does. Takes nothing and writes nothing: a run dir that does not exist has no holder."""
    path = lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError as err:  # a filesystem without locks: nobody can be seen holding it
            log.debug("cannot test the lock on %s: %s", path, err)
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_not_in_use(run_dir: Path) -> None:
    """Raise :class:`RunDirInUse` when another process holds the run dir's lock."""
    info = holder(run_dir)
    if info is not None:
        raise RunDirInUse(_in_use_message(run_dir, info))


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run dir's lock for the body (creating the run dir); :class:`RunDirInUse` if another process holds it.

    On a filesystem that does not support ``flock`` (some network filesystems) the body runs unlocked, with a
    warning: two processes on one run dir are then not detected.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _take(fd)
        except BlockingIOError:
            raise RunDirInUse(_in_use_message(run_dir, _read_holder(fd))) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("pipeline: %s cannot be locked on this filesystem (%s): nothing stops a second process from "
                        "writing the same run dir", lock_path(run_dir), err)
            yield
            return
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _take(fd: int, tries: int = 5) -> None:
    # a few tries: holder() takes a shared lock for an instant, which must not read as "in use"
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.1)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = {}
    return info if isinstance(info, dict) else {}


def _in_use_message(run_dir: Path, info: dict[str, Any]) -> str:
    if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
        info = {}  # the previous holder's record: the new one has locked and not yet written its own
    who = (f"process {info['pid']} on {info.get('host', '?')} (started {info.get('started', '?')}: "
           f"{info.get('command', '?')})") if "pid" in info else "another process (it is starting)"
    return (f"run_dir {run_dir} is in use by {who}. Two processes writing one run dir would overwrite each other's "
            f"checkpoints; wait for it to finish, stop it (kill -TERM <pid>; the run resumes where it stopped), or "
            f"give this run another run_dir. Nothing was changed.")


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True
