"""The partition file: which trajectories SFT trains on and which go (as tasks) to the RL stage.

`partition.json` (written atomically, read by the DataModule and the RL stage)::

    {"format": "prism_lit.partition/1",
     "router": "prism",                 # the router's name
     "score": "gini",                   # the statistic routed on, or null (random / all-* routers)
     "threshold": 0.4137,               # score threshold (RL iff score > threshold), or null
     "rl_fraction": 0.5,                # the requested RL share, or null
     "sft_ids": ["id", ...],            # sorted
     "rl_ids": ["id", ...],             # sorted, disjoint from sft_ids
     "task_of": {"id": "task_id", ...},         # every id of sft_ids ∪ rl_ids
     "task_type_of": {"id": "task_type", ...}}  # every id of sft_ids ∪ rl_ids
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_lit.io import atomic_write_json

__all__ = ["PARTITION_FORMAT", "Partition", "PartitionFormatError", "load_partition", "save_partition"]

PARTITION_FORMAT = "prism_lit.partition/1"


class PartitionFormatError(ValueError):
    """A bad partition file; the message names the file and the field."""

    def __init__(self, path: str | os.PathLike | None, field: str | None, problem: str):
        self.path, self.field, self.problem = (str(path) if path is not None else None), field, problem
        where = ", ".join(p for p in (self.path, f"field '{field}'" if field else None) if p)
        super().__init__(f"{where}: {problem}" if where else problem)


@dataclass
class Partition:
    """A split of the expert trajectories into D_SFT and D_RL, with each trajectory's task."""

    router: str
    score: str | None
    threshold: float | None
    rl_fraction: float | None
    sft_ids: list[str]
    rl_ids: list[str]
    task_of: dict[str, str] = field(default_factory=dict)
    task_type_of: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, path: str | os.PathLike | None = None) -> None:
        """Raise PartitionFormatError unless the ids are unique, disjoint and all have a task and type."""
        for name in ("sft_ids", "rl_ids"):
            ids = getattr(self, name)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise PartitionFormatError(path, name, "must be a list of strings")
            if len(set(ids)) != len(ids):
                raise PartitionFormatError(path, name, "holds a duplicate id")
        both = set(self.sft_ids) & set(self.rl_ids)
        if both:
            raise PartitionFormatError(path, "rl_ids", f"ids in both sft_ids and rl_ids: {sorted(both)[:5]}")
        for name in ("task_of", "task_type_of"):
            mapping = getattr(self, name)
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
            ):
                raise PartitionFormatError(path, name, "must map id strings to strings")
            missing = [i for i in (*self.sft_ids, *self.rl_ids) if i not in mapping]
            if missing:
                raise PartitionFormatError(path, name, f"no entry for ids {missing[:5]}")
        if not isinstance(self.router, str) or not self.router:
            raise PartitionFormatError(path, "router", "must be a non-empty string")
        if self.score is not None and not isinstance(self.score, str):
            raise PartitionFormatError(path, "score", "must be a string or null")
        for name in ("threshold", "rl_fraction"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise PartitionFormatError(path, name, "must be a number or null")
        if self.rl_fraction is not None and not 0.0 <= self.rl_fraction <= 1.0:
            raise PartitionFormatError(path, "rl_fraction", f"must lie in [0, 1], got {self.rl_fraction}")

    @property
    def rl_task_ids(self) -> list[str]:
        """Sorted unique task ids of the RL trajectories (what the RL stage resets its envs with)."""
        return sorted({self.task_of[i] for i in self.rl_ids})

    @property
    def sft_task_ids(self) -> list[str]:
        """Sorted unique task ids of the SFT trajectories."""
        return sorted({self.task_of[i] for i in self.sft_ids})

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the file format (an infinite threshold is written as "inf" / "-inf")."""
        threshold: float | str | None = self.threshold
        if threshold is not None and not math.isfinite(threshold):
            threshold = None if math.isnan(threshold) else ("inf" if threshold > 0 else "-inf")
        return {
            "format": PARTITION_FORMAT,
            "router": self.router,
            "score": self.score,
            "threshold": threshold,
            "rl_fraction": self.rl_fraction,
            "sft_ids": sorted(self.sft_ids),
            "rl_ids": sorted(self.rl_ids),
            "task_of": {k: self.task_of[k] for k in sorted(self.task_of)},
            "task_type_of": {k: self.task_type_of[k] for k in sorted(self.task_type_of)},
        }


def save_partition(path: str | os.PathLike, partition: Partition) -> None:
    """Write `partition` to `path` atomically (a reader sees the old file or the new one)."""
    partition.validate()
    atomic_write_json(path, partition.to_json())


_FIELDS = ("router", "score", "threshold", "rl_fraction", "sft_ids", "rl_ids", "task_of", "task_type_of")


def load_partition(path: str | os.PathLike) -> Partition:
    """Read a partition file; raises PartitionFormatError naming the file and the field on a bad file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PartitionFormatError(path, None, "no such file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PartitionFormatError(path, None, f"not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise PartitionFormatError(path, None, "must hold a JSON object")
    fmt = data.get("format", PARTITION_FORMAT)
    if fmt != PARTITION_FORMAT:
        raise PartitionFormatError(path, "format", f"expected '{PARTITION_FORMAT}', got {fmt!r}")
    for name in _FIELDS:
        if name not in data:
            raise PartitionFormatError(path, name, "missing")
    threshold = data["threshold"]
    if isinstance(threshold, str) and threshold in ("inf", "-inf"):
        threshold = float(threshold)
    kwargs = {name: data[name] for name in _FIELDS}
    kwargs["threshold"] = threshold
    partition = Partition.__new__(Partition)
    for name, value in kwargs.items():
        setattr(partition, name, value)
    partition.validate(path)
    return partition
