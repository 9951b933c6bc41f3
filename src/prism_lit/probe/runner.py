"""The probe pass shared by the Lightning callback and the plain `run_probe` function.

Files written into the run directory (partition.json last, so its presence means the probe finished):
probe.jsonl (records.py), probe_meta.json (unit names, router, counts), probe_histogram.png, partition.json
(partition.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prism_lit.io import atomic_write_json
from prism_lit.probe.partition import Partition, save_partition
from prism_lit.probe.plots import save_score_histogram
from prism_lit.probe.records import ProbeRecord, records_from_norms, write_probe_records
from prism_lit.probe.routers import PrismRouter, Router
from prism_lit.probe.unit_norms import measure_unit_grad_norms

__all__ = [
    "HISTOGRAM_FILE",
    "PARTITION_FILE",
    "PROBE_META_FILE",
    "PROBE_RECORDS_FILE",
    "dedupe_records",
    "finalize_probe",
    "probe_batch",
    "run_probe",
]

PROBE_RECORDS_FILE = "probe.jsonl"
PROBE_META_FILE = "probe_meta.json"
PARTITION_FILE = "partition.json"
HISTOGRAM_FILE = "probe_histogram.png"


def probe_batch(
    model: nn.Module, batch: Mapping[str, Any], units: Sequence[str] | None = None
) -> tuple[list[ProbeRecord], list[str]]:
    """Records for every sample of `batch` (one forward + one backward) and the unit names."""
    result = measure_unit_grad_norms(model, batch, units)
    return records_from_norms(batch, result), result.unit_names


def dedupe_records(records: Iterable[ProbeRecord]) -> list[ProbeRecord]:
    """One record per id, the first seen (DistributedSampler repeats samples to even out the ranks)."""
    seen: dict[str, ProbeRecord] = {}
    for r in records:
        seen.setdefault(r.id, r)
    return list(seen.values())


def histogram_score(router: Router) -> str:
    """The score a router splits on, or gini for routers without one (random, all-*)."""
    return getattr(router, "score", None) or "gini"


def finalize_probe(
    records: Iterable[ProbeRecord],
    unit_names: Sequence[str],
    router: Router,
    output_dir: str | os.PathLike,
    extra_meta: Mapping[str, Any] | None = None,
) -> Partition:
    """Dedupe, route and write probe.jsonl, probe_meta.json, the histogram PNG and partition.json."""
    records = sorted(dedupe_records(records), key=lambda r: r.id)
    partition = router.route(records)
    out = Path(output_dir)
    score = histogram_score(router)
    write_probe_records(out / PROBE_RECORDS_FILE, records)
    meta = {
        "units": list(unit_names),
        "n_records": len(records),
        "router": repr(router),
        "score": score,
        "threshold": partition.to_json()["threshold"],
        "n_sft": len(partition.sft_ids),
        "n_rl": len(partition.rl_ids),
        **(extra_meta or {}),
    }
    atomic_write_json(out / PROBE_META_FILE, meta)
    save_score_histogram(out / HISTOGRAM_FILE, [r.score(score) for r in records], partition.threshold, score)
    save_partition(out / PARTITION_FILE, partition)
    return partition


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def run_probe(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    router: Router | None = None,
    output_dir: str | os.PathLike = ".",
    units: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Partition:
    """Probe every batch of `dataloader` with `model` (no Trainer), route, write the run-directory files.

    Batches are dicts as the SFT DataModule yields them (input_ids, attention_mask, labels, and the
    metadata lists id, task_id, task_type); tensors are moved to the model's device. ``meta`` is added to
    probe_meta.json (the pipeline records what the pass measured with, so later runs can reuse it).
    """
    router = router if router is not None else PrismRouter()
    device = next(model.parameters()).device
    records: list[ProbeRecord] = []
    unit_names: list[str] = []
    start = time.perf_counter()
    for batch in dataloader:
        batch_records, unit_names = probe_batch(model, _to_device(batch, device), units)
        records.extend(batch_records)
    if not records:
        raise ValueError("run_probe: the dataloader yielded no samples")
    seconds = time.perf_counter() - start
    return finalize_probe(records, unit_names, router, output_dir, {**(meta or {}), "probe_seconds": round(seconds, 3)})
