"""Route the records of an earlier probe pass instead of measuring again: probe once, route many ways.

A probe pass's records depend on the model, the corpus and how trajectories are rendered and cut, not on the router.
Every probe pass writes what it measured with into ``probe_meta.json`` (``measured_with``: digests of the model's
files and of the corpus, and the rendering settings); a run given ``probe.scores_from`` reads those records only
when its own ``measured_with`` is the same, and names every difference otherwise. Digests are of file contents, so a
copied model or corpus matches and a retrained one does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prism_lit.probe.records import ProbeRecord, read_probe_records

__all__ = ["measurement_key", "probe_source", "reuse_records"]

_WHOLE_FILE_BYTES = 16 << 20  # larger files (model weights) are digested by size, head and tail
_EDGE_BYTES = 1 << 20


def _file_digest(path: Path, h: Any) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        if size <= _WHOLE_FILE_BYTES:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(_EDGE_BYTES))
            fh.seek(size - _EDGE_BYTES)
            h.update(fh.read(_EDGE_BYTES))


def content_digest(path: str | os.PathLike) -> str:
    """A digest of a file, or of every file below a directory (names relative to it, sorted), by content."""
    root = Path(path)
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        h.update(str(file.relative_to(root) if file != root else file.name).encode() + b"\0")
        _file_digest(file, h)
    return h.hexdigest()[:16]


def measurement_key(model_dirs: Iterable[str | os.PathLike], corpus: str | os.PathLike,
                    **settings: Any) -> dict[str, Any]:
    """What a probe pass's records depend on: the model's files, the corpus file and ``settings`` (JSON values:
    the token limit, dtype, chat template and rendering protocol)."""
    return {"model": [content_digest(d) for d in model_dirs], "corpus": content_digest(corpus),
            **json.loads(json.dumps(settings, default=str))}


def probe_source(scores_from: str | os.PathLike) -> tuple[Path, Path]:
    """``(probe.jsonl, probe_meta.json)`` of an earlier probe: its directory or its ``probe.jsonl``."""
    from prism_lit.probe.runner import PROBE_META_FILE, PROBE_RECORDS_FILE

    path = Path(scores_from)
    records = path if path.suffix == ".jsonl" else path / PROBE_RECORDS_FILE
    meta = records.parent / PROBE_META_FILE
    for file in (records, meta):
        if not file.is_file():
            raise FileNotFoundError(f"probe.scores_from: {scores_from!r} has no {file.name} (give the probe "
                                    f"directory of an earlier run, e.g. runs/x/probe, or its {PROBE_RECORDS_FILE})")
    return records, meta


def reuse_records(scores_from: str | os.PathLike, key: Mapping[str, Any],
                  corpus_ids: Iterable[str]) -> tuple[list[ProbeRecord], dict[str, Any]]:
    """The records and meta of the probe at ``scores_from``, checked to be this run's measurement: the same
    ``measured_with`` key and one record for every corpus trajectory. A mismatch is a ValueError naming the file
    and what differs."""
    records_file, meta_file = probe_source(scores_from)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"probe.scores_from: {meta_file}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("units"), list):
        raise ValueError(f"probe.scores_from: {meta_file}: expected a JSON object with a 'units' list")
    theirs = meta.get("measured_with")
    if theirs is None:
        raise ValueError(f"probe.scores_from: {meta_file} does not say what it was measured with (a probe made "
                         f"before prism_lit recorded it); measure again (drop probe.scores_from)")
    differ = sorted(k for k in set(theirs) | set(key) if theirs.get(k) != key.get(k))
    if differ:
        raise ValueError(f"probe.scores_from: {meta_file} was measured with other "
                         f"{', '.join(differ)} than this run's (model and corpus compare by content); its records "
                         f"are not this run's measurement: drop probe.scores_from, or point it at a matching probe")
    records = read_probe_records(records_file)
    ids, wanted = {r.id for r in records}, set(corpus_ids)
    if ids != wanted:
        missing, extra = sorted(wanted - ids), sorted(ids - wanted)
        raise ValueError(f"probe.scores_from: {records_file} does not hold one record per corpus trajectory "
                         f"({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} not in the corpus, "
                         f"e.g. {extra[:3]})")
    return records, meta
