"""Finding ALFWorld games on disk: generated trees and real ``json_2.1.1`` data share one layout.

``<root>/<split>/<task dir>/<trial dir>/game.tw-pddl`` (+ ``traj_data.json``). A game's task id is
``alfworld/<split>/<task dir>/<trial dir>``, the path of its trial directory below the data root, so the same
id names the same game whether it was generated here or downloaded with alfworld.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prism_lit.envs.alfworld.layouts import TASK_TYPES

TASK_ID_PREFIX = "alfworld/"


@dataclass(frozen=True)
class GameEntry:
    """One playable game: its file, task id and ALFWorld task type."""

    task_id: str
    task_type: str
    path: Path


def task_id_for(game_file: str | os.PathLike) -> str:
    """``alfworld/<split>/<task dir>/<trial dir>`` for a ``.../<split>/<task dir>/<trial dir>/game.tw-pddl``."""
    trial = Path(game_file).resolve().parent
    return f"{TASK_ID_PREFIX}{trial.parent.parent.name}/{trial.parent.name}/{trial.name}"


def task_type_for(game_file: str | os.PathLike) -> str:
    """The task type from ``traj_data.json`` next to the game, else from the task directory's name."""
    path = Path(game_file)
    traj = path.parent / "traj_data.json"
    if traj.is_file():
        try:
            task_type = json.loads(traj.read_text()).get("task_type")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{traj}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if task_type:
            return str(task_type)
    prefix = path.parent.parent.name.split("-", 1)[0]
    if prefix in TASK_TYPES:
        return prefix
    raise ValueError(f"{path}: cannot tell the task type (no traj_data.json 'task_type' field and the directory "
                     f"name does not start with one of {TASK_TYPES})")


def object_words(task_id: str) -> list[str]:
    """The word naming a task's target object in the game's text: ``…/pick_cool_then_place_in_recep-Cup-None-
    DiningTable-29/trial_…`` -> ``["cup"]`` (ALFRED's task directory: type-object-movable receptacle-receptacle-
    scene; the text writes kinds in lower case, ``SoapBar`` as ``soapbar``)."""
    parts = task_id.split("/")
    fields = parts[-2].split("-") if len(parts) >= 2 else []
    if len(fields) < 3 or fields[0] not in TASK_TYPES:
        raise ValueError(f"object_words: {task_id!r} is not an ALFWorld task id "
                         f"(alfworld/<split>/<type>-<Object>-<MovableRecep>-<Recep>-<scene>/<trial>)")
    return [fields[1].lower()]


def entries_for(game_files: Iterable[str | os.PathLike]) -> list[GameEntry]:
    """Game entries for explicit files, in the given order; duplicate task ids are an error."""
    entries: list[GameEntry] = []
    seen: dict[str, Path] = {}
    for f in game_files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ALFWorld game file not found: {path}")
        tid = task_id_for(path)
        if tid in seen:
            raise ValueError(f"two game files share task id {tid!r}: {seen[tid]} and {path}")
        seen[tid] = path
        entries.append(GameEntry(tid, task_type_for(path), path))
    return entries


def _is_solvable(path: Path) -> bool:
    try:
        with open(path) as fh:
            return json.load(fh).get("solvable") is True
    except (OSError, json.JSONDecodeError):
        return False


def find_games(data_dir: str | os.PathLike, split: str,
               task_types: Sequence[str] | None = None) -> list[GameEntry]:
    """The solvable games of ``split`` under a json_2.1.1-style tree (``data_dir/<split>/...``), sorted by id.

    Like alfworld's ``AlfredTWEnv``, games without a ``solvable: true`` game file and the unsupported
    ``movable`` / ``Sliced`` trials are skipped. ``task_types`` keeps only those types.
    """
    root = Path(data_dir).expanduser()
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no {split!r} split under {root} (expected {split_dir}/<task>/<trial>/game.tw-pddl)")
    wanted = set(task_types) if task_types is not None else None
    entries = []
    for path in sorted(split_dir.glob("*/*/game.tw-pddl")):
        if "movable" in path.parent.parent.name or "Sliced" in path.parent.parent.name:
            continue
        if not _is_solvable(path):
            continue
        entry = GameEntry(task_id_for(path), task_type_for(path), path)
        if wanted is None or entry.task_type in wanted:
            entries.append(entry)
    return entries
