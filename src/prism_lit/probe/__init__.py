"""The PRISM probe: per-sample, per-unit gradient norms of the base model, their concentration, and routing.

See docs/method.md for the method and the file formats.
"""

from prism_lit.probe.callback import GradientConcentrationProbe
from prism_lit.probe.partition import Partition, PartitionFormatError, load_partition, save_partition
from prism_lit.probe.records import ProbeRecord, read_probe_records, write_probe_records
from prism_lit.probe.routers import (
    AllRLRouter,
    AllSFTRouter,
    InverseRouter,
    MagnitudeRouter,
    PrismRouter,
    RandomRouter,
    Router,
    VerifiedRewardRouter,
)
from prism_lit.probe.runner import PARTITION_FILE, PROBE_META_FILE, PROBE_RECORDS_FILE, run_probe
from prism_lit.probe.stats import coefficient_of_variation, gini, kurtosis
from prism_lit.probe.unit_norms import (
    DEFAULT_UNITS,
    UnitGradNorms,
    find_units,
    measure_unit_grad_norms,
    per_sample_unit_grad_norms_naive,
    unit_grad_norms,
)

__all__ = [
    "DEFAULT_UNITS",
    "PARTITION_FILE",
    "PROBE_META_FILE",
    "PROBE_RECORDS_FILE",
    "AllRLRouter",
    "AllSFTRouter",
    "GradientConcentrationProbe",
    "InverseRouter",
    "MagnitudeRouter",
    "Partition",
    "PartitionFormatError",
    "PrismRouter",
    "ProbeRecord",
    "RandomRouter",
    "Router",
    "UnitGradNorms",
    "VerifiedRewardRouter",
    "coefficient_of_variation",
    "find_units",
    "gini",
    "kurtosis",
    "load_partition",
    "measure_unit_grad_norms",
    "per_sample_unit_grad_norms_naive",
    "read_probe_records",
    "run_probe",
    "save_partition",
    "unit_grad_norms",
    "write_probe_records",
]
