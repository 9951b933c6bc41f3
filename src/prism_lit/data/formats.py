"""Readers (and writers, for round trips) of the field's trajectory formats.

- ``prism``: the project's own schema (see :mod:`prism_lit.data.schema`).
- ``eto``: ETO / AgentInstruct style, ``{"id", "conversations": [{"from": "human"|"gpt"|"system", "value"}]}``;
  AgentInstruct's optional per-turn ``loss`` flag is honoured.
- ``agentgym``: AgentGym's AgentTraj style, ``{"item_id", "conversations": [{"from", "loss": true|false|null, "value"}]}``.

Each reader names the file, line and field of the first bad record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from prism_lit.data.schema import (
    Message,
    Trajectory,
    TrajectoryFormatError,
    check_unique_ids,
    decode_utf8,
    iter_jsonl,
    read_trajectories,
)
from prism_lit.io import atomic_write_text

FORMATS = ("auto", "prism", "eto", "agentgym")
_FROM_TO_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_ROLE_TO_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


def _conversation_record(
    obj: Any, path, line: int, *, id_key: str, env: str, fmt: str
) -> Trajectory:
    if not isinstance(obj, dict):
        raise TrajectoryFormatError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    if id_key not in obj:
        raise TrajectoryFormatError(path, line, id_key, "missing required field")
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise TrajectoryFormatError(path, line, "conversations", "missing or not a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        name = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise TrajectoryFormatError(path, line, name, "expected an object with 'from' and 'value'")
        if "from" not in turn:
            raise TrajectoryFormatError(path, line, f"{name}.from", "missing required field")
        role = _FROM_TO_ROLE.get(turn["from"])
        if role is None:
            raise TrajectoryFormatError(
                path, line, f"{name}.from", f"unknown speaker {turn['from']!r}; expected human, gpt or system"
            )
        value = turn.get("value")
        if not isinstance(value, str):
            raise TrajectoryFormatError(path, line, f"{name}.value", "missing or not a string")
        loss = turn.get("loss")
        if loss is not None and not isinstance(loss, bool):
            raise TrajectoryFormatError(path, line, f"{name}.loss", f"must be true, false or null, got {loss!r}")
        messages.append({"role": role, "content": value, **({"loss": loss} if loss is not None else {})})
    record_id = str(obj[id_key])
    task_id = str(obj.get("game_file") or obj.get("task_id") or record_id)
    record = {
        "id": record_id,
        "env": str(obj.get("env") or env),
        "task_id": task_id,
        "task_type": str(obj.get("task_type", "")),
        "messages": messages,
        "meta": {"source_format": fmt},
    }
    for key in ("reward", "won"):
        if key in obj:
            record[key] = obj[key]
    return Trajectory.from_dict(record, path, line)


def read_eto(path: str | os.PathLike, env: str = "unknown") -> list[Trajectory]:
    return _unique(path, [(n, _conversation_record(o, path, n, id_key="id", env=env, fmt="eto"))
                          for n, o in iter_jsonl_or_json(path)])


def read_agentgym(path: str | os.PathLike, env: str = "unknown") -> list[Trajectory]:
    return _unique(path, [(n, _conversation_record(o, path, n, id_key="item_id", env=env, fmt="agentgym"))
                          for n, o in iter_jsonl_or_json(path)])


def _unique(path, numbered: list[tuple[int, Trajectory]]) -> list[Trajectory]:
    check_unique_ids(path, numbered)
    return [t for _, t in numbered]


def iter_jsonl_or_json(path: str | os.PathLike) -> Iterable[tuple[int, Any]]:
    """JSONL, or a single JSON array (as ETO and AgentGym ship their data); array items get line = index + 1."""
    with open(path, "rb") as fh:
        head = fh.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        with open(path, "rb") as fh:
            text = decode_utf8(path, fh.read()).removeprefix("\ufeff")
            try:
                items = json.loads(text)
            except json.JSONDecodeError as err:
                raise TrajectoryFormatError(path, err.lineno, None, f"malformed JSON ({err.msg})") from None
        return list(enumerate(items, start=1))
    return list(iter_jsonl(path))


def detect_format(path: str | os.PathLike) -> str:
    """``prism``, ``eto`` or ``agentgym`` from the first record's keys."""
    for line, obj in iter_jsonl_or_json(path):
        if isinstance(obj, dict) and "messages" in obj:
            return "prism"
        if isinstance(obj, dict) and "conversations" in obj:
            return "agentgym" if "item_id" in obj else "eto"
        raise TrajectoryFormatError(
            path, line, None, "cannot tell the format: expected 'messages' (prism) or 'conversations' (eto/agentgym)"
        )
    raise TrajectoryFormatError(path, None, None, "the file has no records")


def load_trajectories(path: str | os.PathLike, format: str = "auto", env: str = "unknown") -> list[Trajectory]:
    """Read any supported format; ``format="auto"`` detects it from the first record."""
    if format not in FORMATS:
        raise ValueError(f"format: unknown trajectory format {format!r}; choose one of {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trajectory file not found: {path}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "prism":
        return read_trajectories(path)
    return read_eto(path, env) if fmt == "eto" else read_agentgym(path, env)


def to_conversation_record(trajectory: Trajectory, fmt: str) -> dict[str, Any]:
    """The ETO / AgentGym record for ``trajectory`` (inverse of the readers)."""
    turns = []
    for m in trajectory.messages:
        turn: dict[str, Any] = {"from": _ROLE_TO_FROM[m.role], "value": m.content}
        if fmt == "agentgym" or m.loss is not None:
            turn["loss"] = m.loss
        turns.append(turn)
    record: dict[str, Any] = {("item_id" if fmt == "agentgym" else "id"): trajectory.id, "conversations": turns}
    if trajectory.task_id != trajectory.id:
        record["task_id"] = trajectory.task_id
    if trajectory.task_type:
        record["task_type"] = trajectory.task_type
    return record


def write_conversations(path: str | os.PathLike, trajectories: Iterable[Trajectory], fmt: str) -> None:
    if fmt not in ("eto", "agentgym"):
        raise ValueError(f"write_conversations: fmt must be 'eto' or 'agentgym', got {fmt!r}")
    lines = [json.dumps(to_conversation_record(t, fmt), ensure_ascii=False) for t in trajectories]
    atomic_write_text(path, "\n".join(lines) + "\n")


__all__ = [
    "FORMATS", "Message", "detect_format", "load_trajectories", "read_agentgym", "read_eto", "to_conversation_record",
    "write_conversations",
]
