"""Atomic artifact writes: a reader sees the old file (or directory) or the whole new one, never a torn one.

Written files and directories get the permissions a plain ``open()`` / ``mkdir`` would give them under the
process's umask (``tempfile`` creates them private, 0600 / 0700, and a rename keeps that), so a run dir on a
shared filesystem is as readable to the group as its owner's umask says.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it replaces ``path`` by rename, on error it is removed.

    Readers see the old directory or the whole new one (a model export, a built model), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        _plain_permissions(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _plain_permissions(root: Path) -> None:
    """What ``mkdir`` and ``open()`` would have given ``root`` and everything in it under the umask (``save_pretrained``
    writes its weights 0600, ``mkdtemp`` makes 0700)."""
    mask = umask()
    os.chmod(root, 0o777 & ~mask)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o666 & ~mask)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.png")  # one per writer
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
    tmp = Path(name)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


# ---------------------------------------------------------------------------------------------- integrity checks
def _discard_hint(path: Path, what: str) -> str:
    import shlex

    quoted = shlex.quote(str(path))
    return f"Discard it with: mv {quoted} {shlex.quote(str(path) + '.corrupt')} — {what}."


def zip_problem(path: str | os.PathLike, full: bool = True) -> str | None:
    """Why ``path`` is not a complete zip archive (torch's checkpoint and ``.bin`` format), or ``None``.

    A file cut off by a kill loses the central directory at its end, which opening it detects at once; ``full``
    also checks every member's CRC (reads the whole file, as loading it would).
    """
    import zipfile

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if not members:
                return "the archive holds no data"
            for info in members:
                if info.header_offset + info.compress_size > size:
                    return f"member {info.filename!r} runs past the end of the file (cut off)"
            if not any(m.filename.endswith("data.pkl") for m in members):
                return "no data.pkl in the archive (not a torch checkpoint)"
            if full:
                bad = archive.testzip()
                if bad is not None:
                    return f"member {bad!r} fails its CRC check"
    except zipfile.BadZipFile as err:
        return f"not a complete zip archive ({err}; the file was probably cut off while it was written)"
    except (OSError, EOFError, ValueError) as err:
        return f"unreadable ({err})"
    return None


def check_checkpoint(path: str | os.PathLike, full: bool = True,
                     after_discard: str = "the stage then starts again from its beginning; nothing else in the "
                                          "run directory needs to change") -> Path:
    """Raise :class:`~prism_lit.errors.CheckpointError` naming ``path`` and the command that discards it, unless
    ``path`` is a complete torch checkpoint. Call it before ``Trainer.fit(ckpt_path=path)``: a checkpoint cut off by
    a kill otherwise fails deep in ``torch.load`` with no path, on every resume. ``after_discard`` says what happens
    once it is gone."""
    from prism_lit.errors import CheckpointError, MissingFileError

    path = Path(path)
    if path.is_dir() and (path / ".metadata").is_file():
        return path  # a sharded (Distributed Checkpoint) directory, written by FSDP2Strategy; DCP checks its shards
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""),
                               hint="Pass the path of a .ckpt file or of a sharded checkpoint directory, or no "
                                    "ckpt_path to start from scratch.")
    problem = zip_problem(path, full=full)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: {problem}; training cannot resume from it.",
                              hint=_discard_hint(path, after_discard))
    return path


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete safetensors file (header, and data exactly covering the rest), or ``None``."""
    import json
    import struct

    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"the file has {size} bytes, less than its 8-byte header length"
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            return f"the header claims {header_len} bytes but the file has {size} (cut off)"
        try:
            header = json.loads(fh.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"the header is not valid JSON ({err})"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2]
    expected = max(ends, default=0)
    actual = size - 8 - header_len
    if actual < expected:
        return f"the tensors need {expected} bytes of data but the file holds {actual} (cut off)"
    if actual > expected:
        return f"{actual - expected} bytes of data follow the last tensor (not a safetensors file written whole)"
    return None
