"""Per-trajectory probe records and the `probe.jsonl` file.

One JSON object per line, sorted by id::

    {"id": "webshop-train-00017", "task_id": "webshop/train/17", "task_type": "beauty",
     "norms": [0.012, ...],          # ‖∇_{W_u} L_i‖_F for the N units, in probe_meta.json's "units" order
     "gini": 0.41, "kurtosis": 5.2, "cv": 0.93,
     "l2": 0.087,                    # sqrt(Σ_u norms_u²): magnitude of the gradient over all units
     "loss": 2.31,                   # L_i, mean next-token CE over the trajectory's trained tokens
     "n_tokens": 143}                # number of trained (target) tokens

A value that is undefined (NaN: the loss of a trajectory without trained tokens, the kurtosis of a
constant norm vector) is written as null and read back as NaN.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from prism_lit.io import atomic_write_text
from prism_lit.probe.stats import SCORES as CONCENTRATION_FUNCTIONS
from prism_lit.probe.unit_norms import UnitGradNorms

__all__ = ["METADATA_KEYS", "ProbeRecord", "read_probe_records", "records_from_norms", "write_probe_records"]

METADATA_KEYS = ("id", "task_id", "task_type")


#: the values a record holds that routers and reports can use (concentration scores first)
CONCENTRATION_SCORES = tuple(CONCENTRATION_FUNCTIONS)
RECORD_SCORES = (*CONCENTRATION_SCORES, "l2", "loss")


@dataclass
class ProbeRecord:
    """What the probe measured for one trajectory."""

    id: str
    task_id: str
    task_type: str
    norms: list[float]
    gini: float
    kurtosis: float
    cv: float
    l2: float
    loss: float
    n_tokens: int

    @classmethod
    def unmeasured(cls, id: str, task_id: str, task_type: str) -> ProbeRecord:
        """A record for a router that reads no score (no probe pass ran): every measurement is NaN."""
        nan = float("nan")
        return cls(id, task_id, task_type, [], nan, nan, nan, nan, nan, 0)

    def score(self, name: str) -> float:
        """The value routed on: "gini", "kurtosis", "cv", "l2" or "loss"."""
        if name not in RECORD_SCORES:
            raise ValueError(f"unknown score '{name}' (choose {', '.join(RECORD_SCORES)})")
        return float(getattr(self, name))


def _metadata(batch: Mapping[str, Any], size: int) -> dict[str, list[str]]:
    meta = {}
    for key in METADATA_KEYS:
        if key not in batch:
            raise KeyError(
                f"batch: missing metadata '{key}' (a list of {size} strings; have {sorted(batch)})"
            )
        values = list(batch[key])
        if len(values) != size:
            raise ValueError(f"batch: metadata '{key}' has {len(values)} entries for {size} samples")
        meta[key] = [str(v) for v in values]
    return meta


def records_from_norms(batch: Mapping[str, Any], result: UnitGradNorms) -> list[ProbeRecord]:
    """One ProbeRecord per sample of `batch`, from the norms measured on it."""
    norms = result.norms.detach().to("cpu", torch.float64)
    meta = _metadata(batch, norms.shape[0])
    stats = {name: fn(norms).tolist() for name, fn in CONCENTRATION_FUNCTIONS.items()}
    l2 = norms.square().sum(dim=-1).sqrt().tolist()
    loss = result.loss.detach().cpu().tolist()
    n_tokens = result.n_tokens.detach().cpu().tolist()
    return [
        ProbeRecord(
            id=meta["id"][i],
            task_id=meta["task_id"][i],
            task_type=meta["task_type"][i],
            norms=norms[i].tolist(),
            gini=stats["gini"][i],
            kurtosis=stats["kurtosis"][i],
            cv=stats["cv"][i],
            l2=l2[i],
            loss=loss[i],
            n_tokens=int(n_tokens[i]),
        )
        for i in range(norms.shape[0])
    ]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def write_probe_records(path: str | os.PathLike, records: Iterable[ProbeRecord]) -> None:
    """Write records to `path` as JSON lines sorted by id, atomically."""
    lines = [
        json.dumps({k: _nan_to_none(v) for k, v in asdict(r).items()}, ensure_ascii=False)
        for r in sorted(records, key=lambda r: r.id)
    ]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


_FLOAT_FIELDS = RECORD_SCORES


def read_probe_records(path: str | os.PathLike) -> list[ProbeRecord]:
    """Read `probe.jsonl`; a bad line raises ValueError naming the file, the line and the field."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object")
            for key in (*METADATA_KEYS, "norms", *_FLOAT_FIELDS, "n_tokens"):
                if key not in obj:
                    raise ValueError(f"{path}, line {lineno}, field '{key}': missing")
            for key in _FLOAT_FIELDS:
                v = obj[key]
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise ValueError(f"{path}, line {lineno}, field '{key}': expected a number or null")
                obj[key] = float("nan") if v is None else float(v)
            if not isinstance(obj["norms"], list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj["norms"]
            ):
                raise ValueError(f"{path}, line {lineno}, field 'norms': expected a list of numbers")
            if isinstance(obj["n_tokens"], bool) or not isinstance(obj["n_tokens"], int):
                raise ValueError(f"{path}, line {lineno}, field 'n_tokens': expected an integer")
            for key in METADATA_KEYS:
                if not isinstance(obj[key], str):
                    raise ValueError(f"{path}, line {lineno}, field '{key}': expected a string")
            records.append(ProbeRecord(**{k: obj[k] for k in ProbeRecord.__dataclass_fields__}))
    return records
