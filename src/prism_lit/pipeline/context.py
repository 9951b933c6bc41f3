"""What every stage shares: the stage list, the run's settings, and the one place each artifact's path is named.

A run dir looks like this (every path below comes from :class:`Artifacts`)::

    pipeline_config.json            the resolved config of the last invocation
    tasks/corpus.jsonl              expert corpus D (train split)
    tasks/pretrain.jsonl            pre-training episodes of the embedded base (familiar types only)
    base/model/                     the base policy (HF layout); base/init/, base/warm/ on the way there
    probe/probe.jsonl               per-trajectory unit norms and scores; probe_meta.json, probe_histogram.png
    probe/partition.json            D_SFT / D_RL
    sft/export/                     the SFT policy (full model, or a peft adapter with sft.lora)
    rl/export/                      the RL policy
    rl/metrics.jsonl                one line per RL iteration: its logged numbers (rollout, loss, env/… metrics)
    eval/eval.json                  greedy metrics per policy and split
    eval/episodes.jsonl             one line per evaluated episode: policy, split, goal, won, score (paired stats)
    report.json, summary.md, plots/ the report
    <stage>/stage.json              marker: the stage finished (seconds, info, the settings it was made with)
    <stage>/started.json            the settings a started stage runs with (a resume under other settings stops)
    <stage>/checkpoints/last.ckpt   mid-stage state (base, SFT, RL), resumed after a kill
    replaced/<stage>-<time>/        what ``--rerun`` moved aside
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_lit.pipeline.config import (
    BaseModelSettings,
    EnvSettings,
    EvalSettings,
    ProbeSettings,
    RLSettings,
    SFTSettings,
)
from prism_lit.probe.runner import PARTITION_FILE, PROBE_RECORDS_FILE

STAGE_ORDER = ("tasks", "base", "probe", "sft", "rl", "eval", "report")
TRAINING_STAGES = ("probe", "sft", "rl")  # what the compute comparison counts
SHARED_STAGES = ("tasks", "base")  # what `compare` builds once and links into every method's run dir


def is_main_process() -> bool:
    """Whether this process keeps the run's records and builds what every rank shares: the only process, or global
    rank 0 of a ``torchrun`` launch, where every rank runs the pipeline."""
    return int(os.environ.get("RANK", "0")) == 0


def built_once(out: Path, ready: str, build: Callable[[], Path], timeout_s: float = 7200.0) -> Path:
    """``out``, built by the main process unless ``out/ready`` is there already; another ``torchrun`` rank waits for
    ``out/ready`` instead of building the same directory at the same time (``build`` must write ``out`` whole, by
    rename, so that ``ready`` appears with the rest). If the main process fails, torchrun stops the other ranks."""
    if (out / ready).is_file():
        return out
    if is_main_process():
        return build()
    deadline = time.monotonic() + timeout_s
    while not (out / ready).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {os.environ.get('RANK')}: waited {timeout_s:.0f} s for rank 0 to write {out / ready}")
        time.sleep(1.0)
    return out


class StageMarkerError(ValueError):
    """A stage marker that exists but cannot be read: the run dir was edited or damaged by hand."""


@dataclass(frozen=True)
class Artifacts:
    """Every file of a run, named once."""

    run_dir: Path

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def marker(self, stage: str) -> Path:
        return self.run_dir / stage / "stage.json"

    def started(self, stage: str) -> Path:
        return self.run_dir / stage / "started.json"

    def last_checkpoint(self, stage: str) -> Path:
        return self.run_dir / stage / "checkpoints" / "last.ckpt"

    @property
    def config(self) -> Path:
        return self.run_dir / "pipeline_config.json"

    def read_config(self) -> dict[str, Any]:
        """The run's resolved config (for tools that read a finished run), or an error naming what is missing."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.config} not found: give a pipeline run directory (prism-lit pipeline "
                                    "writes it)")
        return json.loads(self.config.read_text())

    @property
    def replaced(self) -> Path:
        return self.run_dir / "replaced"

    # tasks
    @property
    def corpus(self) -> Path:
        return self.run_dir / "tasks" / "corpus.jsonl"

    @property
    def pretrain(self) -> Path:
        return self.run_dir / "tasks" / "pretrain.jsonl"

    # base
    @property
    def base_model(self) -> Path:
        return self.run_dir / "base" / "model"

    @property
    def base_init(self) -> Path:
        return self.run_dir / "base" / "init"

    @property
    def base_warm(self) -> Path:
        return self.run_dir / "base" / "warm"

    # probe
    @property
    def probe_dir(self) -> Path:
        return self.run_dir / "probe"

    @property
    def probe_records(self) -> Path:
        return self.run_dir / "probe" / PROBE_RECORDS_FILE

    @property
    def partition(self) -> Path:
        return self.run_dir / "probe" / PARTITION_FILE

    # training
    @property
    def sft_export(self) -> Path:
        return self.run_dir / "sft" / "export"

    @property
    def rl_export(self) -> Path:
        return self.run_dir / "rl" / "export"

    def policy_dir(self, policy: str) -> Path:
        """Where the run saved a policy's full weights: ``base`` (prepared here), ``sft`` or ``final`` (RL's)."""
        return {"base": self.base_model, "sft": self.sft_export, "final": self.rl_export}[policy]

    @property
    def rl_metrics(self) -> Path:
        return self.run_dir / "rl" / "metrics.jsonl"

    # evaluation and report
    @property
    def eval_results(self) -> Path:
        return self.run_dir / "eval" / "eval.json"

    @property
    def eval_episodes(self) -> Path:
        return self.run_dir / "eval" / "episodes.jsonl"

    @property
    def report(self) -> Path:
        return self.run_dir / "report.json"

    @property
    def summary(self) -> Path:
        return self.run_dir / "summary.md"

    @property
    def concentration_plot(self) -> Path:
        return self.run_dir / "plots" / "concentration_by_task_type.png"

    def read_marker(self, stage: str) -> dict[str, Any] | None:
        """The stage's marker, ``None`` when the stage has not finished; a damaged marker is an error."""
        return _read_json_marker(self.marker(stage), stage)

    def read_started(self, stage: str) -> dict[str, Any] | None:
        return _read_json_marker(self.started(stage), stage)


def _read_json_marker(path: Path, stage: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StageMarkerError(
            f"{path}: the {stage!r} stage's record is not valid JSON ({err}); it is written atomically, so it was "
            f"edited or damaged by hand. Pass --rerun '[{stage}]' to redo the stage (its outputs are moved to "
            f"replaced/), or delete {path.parent} yourself.") from None
    if not isinstance(marker, dict):
        raise StageMarkerError(f"{path}: the {stage!r} stage's record is not a JSON object; pass --rerun "
                               f"'[{stage}]' to redo the stage")
    return marker


def read_stage_marker(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    return Artifacts(Path(run_dir)).read_marker(stage)


@dataclass
class PipelineContext:
    """The settings of one pipeline run, its artifacts, and the markers of the stages run or reused so far."""

    run_dir: Path
    env: EnvSettings
    base: BaseModelSettings
    probe: ProbeSettings
    sft: SFTSettings
    rl: RLSettings
    eval: EvalSettings
    seed: int
    trainer: dict[str, Any]
    method: str
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def artifacts(self) -> Artifacts:
        return Artifacts(self.run_dir)

    @property
    def env_id(self) -> str:
        from prism_lit.commands import resolve_env_id

        return resolve_env_id(self.env.id)

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.info.get(stage, {}).get("info", {})
