"""The prism_lit trajectory schema (one JSON object per line) and its strict reader/writer.

Schema (see docs/data.md)::

    {"id": "webshop-train-00017",          # unique, str
     "env": "webshop",                     # str
     "task_id": "webshop/train/17",        # str, what the RL stage resets the env with
     "task_type": "beauty",                # str, for per-type reports ("" when the env has none)
     "messages": [{"role": "system"|"user"|"assistant", "content": str,
                   "loss": bool (optional, default: role == "assistant")}, ...],
     "reward": 1.0,                        # optional float
     "won": true,                          # optional bool
     "meta": {...}}                        # optional dict, carried along untouched

No torch or Lightning here: env oracles write trajectories with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from prism_lit.errors import DataError
from prism_lit.io import atomic_write_text

ROLES = ("system", "user", "assistant")


class TrajectoryFormatError(DataError):
    """Bad trajectory input. The message names the file, the line and the field."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = (str(path) if path else None), line, field, problem
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        DataError.__init__(self, f"{': '.join([', '.join(where)] if where else [])}{': ' if where else ''}{problem}")


@dataclass
class Message:
    role: str
    content: str
    loss: bool | None = None  # None: train on it iff role == "assistant"

    @property
    def trained(self) -> bool:
        return self.role == "assistant" if self.loss is None else bool(self.loss)


@dataclass
class Trajectory:
    id: str
    env: str
    task_id: str
    task_type: str
    messages: list[Message]
    reward: float | None = None
    won: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["messages"] = [
            {k: v for k, v in asdict(m).items() if not (k == "loss" and v is None)} for m in self.messages
        ]
        for key in ("reward", "won"):
            if out[key] is None:
                del out[key]
        if not out["meta"]:
            del out["meta"]
        return out

    @classmethod
    def from_dict(cls, obj: Any, path: str | os.PathLike | None = None, line: int | None = None) -> Trajectory:
        """Validate one record; errors name ``path``, ``line`` and the offending field."""

        def fail(field_name: str | None, problem: str) -> TrajectoryFormatError:
            return TrajectoryFormatError(path, line, field_name, problem)

        if not isinstance(obj, dict):
            raise fail(None, f"expected a JSON object, got {type(obj).__name__}")
        for key in ("id", "env", "task_id", "messages"):
            if key not in obj:
                raise fail(key, "missing required field")
        for key in ("id", "env", "task_id"):
            if not isinstance(obj[key], str) or not obj[key]:
                raise fail(key, f"must be a non-empty string, got {obj[key]!r}")
        task_type = obj.get("task_type", "")
        if not isinstance(task_type, str):
            raise fail("task_type", f"must be a string, got {task_type!r}")
        raw_messages = obj["messages"]
        if not isinstance(raw_messages, list) or not raw_messages:
            raise fail("messages", "must be a non-empty list")
        messages = []
        for i, m in enumerate(raw_messages):
            name = f"messages[{i}]"
            if not isinstance(m, dict):
                raise fail(name, f"expected an object with 'role' and 'content', got {type(m).__name__}")
            if "role" not in m:
                raise fail(f"{name}.role", "missing required field")
            if m["role"] not in ROLES:
                raise fail(f"{name}.role", f"unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
            if "content" not in m or not isinstance(m["content"], str):
                raise fail(f"{name}.content", "missing or not a string")
            if m["role"] == "assistant" and not m["content"].strip():
                raise fail(f"{name}.content", "empty assistant turn")
            loss = m.get("loss")
            if loss is not None and not isinstance(loss, bool):
                raise fail(f"{name}.loss", f"must be true/false, got {loss!r}")
            messages.append(Message(m["role"], m["content"], loss))
        if not any(m.trained for m in messages):
            raise fail("messages", "no turn is trained on (no assistant turn, or every loss flag is false)")
        reward = obj.get("reward")
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            raise fail("reward", f"must be a number, got {reward!r}")
        won = obj.get("won")
        if won is not None and not isinstance(won, bool):
            raise fail("won", f"must be true/false, got {won!r}")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise fail("meta", "must be an object")
        return cls(
            id=obj["id"], env=obj["env"], task_id=obj["task_id"], task_type=task_type, messages=messages,
            reward=None if reward is None else float(reward), won=won, meta=meta,
        )


def decode_utf8(path: str | os.PathLike, data: bytes, first_line: int = 1) -> str:
    """``data`` (the bytes of ``path`` from line ``first_line`` on) as text; bad UTF-8 raises naming the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise TrajectoryFormatError(
            path, line, None,
            f"not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column}): save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8 IN > OUT)") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_object)`` for each non-blank line; a bad line raises with its number."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            text = decode_utf8(path, raw, number)
            if number == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as err:
                raise TrajectoryFormatError(
                    path, number, None, f"malformed JSON ({err.msg} at column {err.colno})") from None


def check_unique_ids(path: str | os.PathLike, numbered: Iterable[tuple[int | None, Trajectory]]) -> None:
    """Raise naming both lines when two trajectories of ``path`` share an id (ids key the partition)."""
    seen: dict[str, int | None] = {}
    for line, t in numbered:
        if t.id in seen:
            first = seen[t.id]
            raise TrajectoryFormatError(
                path, line, "id",
                f"duplicate id {t.id!r} (first on line {first}); every trajectory needs its own id")
        seen[t.id] = line


def read_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    """Read a prism_lit JSONL file; fails on the first bad record, naming file, line and field."""
    numbered = [(line, Trajectory.from_dict(obj, path, line)) for line, obj in iter_jsonl(path)]
    check_unique_ids(path, numbered)
    return [t for _, t in numbered]


def write_trajectories(path: str | os.PathLike, trajectories: Iterable[Trajectory]) -> None:
    """Write trajectories as JSONL atomically."""
    lines = [json.dumps(t.to_dict(), ensure_ascii=False) for t in trajectories]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
