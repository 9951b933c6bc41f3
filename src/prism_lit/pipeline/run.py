"""``prism-lit pipeline``: tasks → base model → probe → route → SFT → RL → evaluate → report, in one run dir.

Every stage writes its artifacts under ``<run_dir>/<stage>/`` and, last, a ``stage.json`` marker with its
wall-clock seconds. A stage whose marker exists is skipped, so a killed pipeline resumes where it stopped;
the SFT and RL stages also resume mid-stage from their ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prism_lit.io import atomic_write_json
from prism_lit.pipeline.config import (
    BaseModelSettings,
    EnvSettings,
    EvalSettings,
    ProbeSettings,
    RLSettings,
    SFTSettings,
)

log = logging.getLogger(__name__)

STAGE_ORDER = ("tasks", "base", "probe", "sft", "rl", "eval", "report")


@dataclass
class PipelineContext:
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

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    @property
    def env_id(self) -> str:
        from prism_lit.commands import resolve_env_id

        return resolve_env_id(self.env.id)


def _marker(ctx: PipelineContext, stage: str) -> Path:
    return ctx.path(stage, "stage.json")


def read_stage_marker(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    path = Path(run_dir) / stage / "stage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn marker cannot happen (atomic writes); a hand-edited bad one re-runs the stage


def _stage_functions() -> dict[str, Callable[[PipelineContext], dict[str, Any]]]:
    from prism_lit.pipeline import stages

    return {
        "tasks": stages.make_tasks,
        "base": stages.prepare_base,
        "probe": stages.probe_and_route,
        "sft": stages.train_sft,
        "rl": stages.train_rl,
        "eval": stages.evaluate,
        "report": stages.write_report,
    }


def pipeline(
    run_dir: str = "runs/pipeline",
    env: EnvSettings = EnvSettings(),
    base: BaseModelSettings = BaseModelSettings(),
    probe: ProbeSettings = ProbeSettings(),
    sft: SFTSettings = SFTSettings(),
    rl: RLSettings = RLSettings(),
    eval: EvalSettings = EvalSettings(),
    seed: int = 0,
    method: str = "prism-gini",
    trainer: dict[str, Any] | None = None,
    stop_after: str | None = None,
    rerun: list[str] | None = None,
) -> dict[str, Any]:
    """Run the PRISM pipeline; each stage is skipped when its artifact is already in ``run_dir``.

    Args:
        run_dir: directory holding every artifact of this run.
        env: environment, its kwargs and the agent protocol.
        base: the base model (a local path, or the embedded default prepared here).
        probe: corpus size and the router.
        sft: the SFT stage.
        rl: the RL stage.
        eval: evaluation panels and which policies to evaluate.
        seed: seed of task generation, model initialisation and training.
        method: the name this run has in reports and comparisons.
        trainer: extra ``lightning.Trainer`` arguments for every training stage (accelerator, devices,
            strategy, precision, ...).
        stop_after: stop after this stage.
        rerun: stages to run again even though their artifact exists (and every stage after them).
    """
    import lightning as L

    if stop_after is not None and stop_after not in STAGE_ORDER:
        raise ValueError(f"stop_after: unknown stage {stop_after!r}; stages are {', '.join(STAGE_ORDER)}")
    for name in rerun or []:
        if name not in STAGE_ORDER:
            raise ValueError(f"rerun: unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")
    ctx = PipelineContext(
        run_dir=Path(run_dir), env=env, base=base, probe=probe, sft=sft, rl=rl, eval=eval, seed=seed,
        trainer=dict(trainer or {}), method=method,
    )
    first_rerun = min((STAGE_ORDER.index(s) for s in rerun or []), default=len(STAGE_ORDER))
    _check_done_stages(ctx, STAGE_ORDER[:first_rerun])
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ctx.path("pipeline_config.json"), _config_dict(ctx))
    functions = _stage_functions()
    for index, name in enumerate(STAGE_ORDER):
        marker = read_stage_marker(ctx.run_dir, name)
        if marker is not None and index < first_rerun:
            log.warning("pipeline: stage %-6s done already (%.1f s) — skipped", name, marker["seconds"])
            ctx.info[name] = marker
        else:
            log.warning("pipeline: stage %-6s running", name)
            L.seed_everything(seed + index, workers=True, verbose=False)
            start = time.perf_counter()
            info = functions[name](ctx)
            marker = {"stage": name, "seconds": time.perf_counter() - start, "info": info,
                      "settings": stage_settings(ctx, name)}
            atomic_write_json(_marker(ctx, name), marker)
            ctx.info[name] = marker
            log.warning("pipeline: stage %-6s finished in %.1f s", name, marker["seconds"])
        if name == stop_after:
            break
    return {name: m["seconds"] for name, m in ctx.info.items()}


def stage_settings(ctx: PipelineContext, name: str) -> dict[str, Any] | None:
    """The settings a stage's artifacts depend on, as JSON values (recorded in its marker)."""
    sections = {
        "tasks": lambda: {"env": asdict(ctx.env), "probe.corpus_tasks": ctx.probe.corpus_tasks,
                          "base.familiar_task_types": ctx.base.familiar_task_types,
                          "base.pretrain_tasks": ctx.base.pretrain_tasks},
        "base": lambda: {"base": asdict(ctx.base)},
        "probe": lambda: {"probe": asdict(ctx.probe)},
        "sft": lambda: {"sft": asdict(ctx.sft)},
        "rl": lambda: {"rl": asdict(ctx.rl)},
        "eval": lambda: {"eval": asdict(ctx.eval)},
    }
    make = sections.get(name)
    return None if make is None else json.loads(json.dumps(make()))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _check_done_stages(ctx: PipelineContext, stages: tuple[str, ...] | list[str]) -> None:
    """Refuse to reuse a finished stage whose recorded settings differ from this config's (before anything is
    written): its artifacts would silently stand for settings they were not made with."""
    for name in stages:
        marker = read_stage_marker(ctx.run_dir, name)
        recorded = (marker or {}).get("settings")
        if recorded is None:  # not run yet, or a marker from before settings were recorded
            continue
        old, new = _flatten(recorded), _flatten(stage_settings(ctx, name))
        changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
                   if old.get(key) != new.get(key)]
        if changed:
            raise ValueError(
                f"pipeline: stage {name!r} in {ctx.run_dir} was made with other settings than this config's "
                f"({'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}). Pass --rerun {name} to redo it "
                f"and the stages after it, or use another run_dir; nothing was changed.")


def _config_dict(ctx: PipelineContext) -> dict[str, Any]:
    return {
        "method": ctx.method, "seed": ctx.seed, "env": asdict(ctx.env), "base": asdict(ctx.base),
        "probe": asdict(ctx.probe), "sft": asdict(ctx.sft), "rl": asdict(ctx.rl), "eval": asdict(ctx.eval),
        "trainer": ctx.trainer,
    }
