"""``prism-lit pipeline``: tasks → base model → probe → route → SFT → RL → evaluate → report, in one run dir.

Every stage writes its artifacts under ``<run_dir>/<stage>/`` and, last, a ``stage.json`` marker with its
wall-clock seconds and the settings it was made with. A stage whose marker exists is skipped, so a killed
pipeline resumes where it stopped; base, SFT and RL also resume mid-stage from their ``last.ckpt``. Everything is
checked before the first stage runs: the settings, the router and the RL module, the env, and that finished or
half-done stages were made with this config's settings (else ``--rerun``, which moves their outputs aside).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import time
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
    plugin_spec,
    settings_json,
)
from prism_lit.pipeline.context import (
    STAGE_ORDER,
    Artifacts,
    PipelineContext,
    is_main_process,
    read_stage_marker,
)
from prism_lit.pipeline.lock import check_not_in_use, run_dir_lock
from prism_lit.pipeline.stages import (
    STAGE_FUNCTIONS,
    base_policy,
    build_rl_module,
    policy_spec,
    trainer_strategy,
)

__all__ = ["STAGE_ORDER", "check_pipeline", "pipeline", "read_stage_marker", "stage_settings"]

log = logging.getLogger(__name__)

# temporary siblings that atomic writes leave behind when a process is killed mid-write
_TEMPORARY = re.compile(r"^\..+\.([a-z0-9_]{8}|[a-z0-9_]{8}\.tmp|tmp\.png)$")


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
        base: the base model (a local path, or the embedded default prepared here) and the model settings every
            stage loads policies with (dtype, attention, activation checkpointing).
        probe: corpus size and the router.
        sft: the SFT stage.
        rl: the RL stage.
        eval: evaluation panels and which policies to evaluate.
        seed: seed of task generation, model initialisation, training, RL sampling and random routing.
        method: the name this run has in reports and comparisons.
        trainer: extra ``lightning.Trainer`` arguments for every training stage (accelerator, devices,
            strategy, precision, ...); ``strategy`` may be a name or ``{class_path, init_args}``
            (``prism_lit.distributed.FSDP2Strategy``: base, SFT and RL sharded with FSDP2).
        stop_after: stop after this stage.
        rerun: stages to run again from scratch (and every stage after them); their old outputs are moved to
            ``<run_dir>/replaced/<stage>-<time>/``, not deleted.

    While it runs, the pipeline holds ``<run_dir>/run.lock`` (:mod:`prism_lit.pipeline.lock`): a second process
    given the same run dir stops at once with an error naming the first one's PID, before it changes anything.
    """
    ctx, first_rerun = _checked_context(run_dir=run_dir, env=env, base=base, probe=probe, sft=sft, rl=rl, eval=eval,
                                        seed=seed, method=method, trainer=trainer, stop_after=stop_after, rerun=rerun)
    # one writer per run dir (under torchrun the ranks are one run: rank 0 holds the lock for them)
    with run_dir_lock(ctx.run_dir) if is_main_process() else contextlib.nullcontext():
        return _run_stages(ctx, first_rerun, seed, stop_after)


def _run_stages(ctx: PipelineContext, first_rerun: int, seed: int, stop_after: str | None) -> dict[str, float]:
    import lightning as L

    art = ctx.artifacts
    if first_rerun < len(STAGE_ORDER):
        _move_aside(art, STAGE_ORDER[first_rerun:])
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    if main:
        atomic_write_json(art.config, _config_dict(ctx))
    for index, name in enumerate(STAGE_ORDER):
        marker = art.read_marker(name)
        if marker is not None:
            log.warning("pipeline: stage %-6s done already (%.1f s) — skipped", name, marker["seconds"])
            ctx.info[name] = marker
        else:
            earlier = _start_attempt(ctx, name) if main else 0.0
            log.warning("pipeline: stage %-6s running%s", name,
                        f" (resumed; {earlier:.0f} s spent before)" if earlier else "")
            L.seed_everything(seed + index, workers=True, verbose=False)
            start = time.perf_counter()
            info = STAGE_FUNCTIONS[name](ctx)
            seconds = time.perf_counter() - start
            marker = {"stage": name, "seconds": earlier + seconds, "info": info,
                      "settings": stage_settings(ctx, name)}
            if earlier:
                marker["seconds_this_attempt"] = seconds
            if main:
                atomic_write_json(art.marker(name), marker)
            ctx.info[name] = marker
            log.warning("pipeline: stage %-6s finished in %.1f s", name, seconds)
        if name == stop_after:
            break
    return {name: m["seconds"] for name, m in ctx.info.items()}


def check_pipeline(**kwargs: Any) -> None:
    """Every check :func:`pipeline` makes before its first stage, for the same arguments; nothing is written.
    ``compare`` runs it for every method × seed before the first run starts."""
    arguments = inspect.signature(pipeline).bind(**kwargs)
    arguments.apply_defaults()
    _checked_context(**arguments.arguments)


def _checked_context(run_dir, env, base, probe, sft, rl, eval, seed, method, trainer, stop_after, rerun
                     ) -> tuple[PipelineContext, int]:
    """The run's context and the index of the first stage to redo, once everything checkable is checked."""
    if stop_after is not None and stop_after not in STAGE_ORDER:
        raise ValueError(f"stop_after: unknown stage {stop_after!r}; stages are {', '.join(STAGE_ORDER)}")
    if is_main_process():  # first: another process's half-written stage would read as a settings mismatch
        check_not_in_use(Path(run_dir))
    for name in rerun or []:
        if name not in STAGE_ORDER:
            raise ValueError(f"rerun: unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")
    ctx = PipelineContext(
        run_dir=Path(run_dir), env=env, base=base, probe=probe, sft=sft, rl=rl, eval=eval, seed=seed,
        trainer=dict(trainer or {}), method=method,
    )
    first_rerun = min((STAGE_ORDER.index(s) for s in rerun or []), default=len(STAGE_ORDER))
    check_before_run(ctx, STAGE_ORDER[:first_rerun])
    return ctx, first_rerun


def stage_settings(ctx: PipelineContext, name: str) -> dict[str, Any] | None:
    """The settings a stage's artifacts depend on, as JSON values (recorded in its marker)."""
    sections = {
        # the tasks come from env.train_split only: the evaluation panels do not change them
        "tasks": lambda: {"env": {k: v for k, v in settings_json(ctx.env).items() if k != "eval_splits"},
                          "probe.corpus_tasks": ctx.probe.corpus_tasks,
                          **({"probe.corpus_file": ctx.probe.corpus_file} if ctx.probe.corpus_file else {}),
                          "base.familiar_task_types": ctx.base.familiar_task_types,
                          "base.pretrain_tasks": ctx.base.pretrain_tasks,
                          "base.unfamiliar_pretrain_tasks": ctx.base.unfamiliar_pretrain_tasks,
                          "base.pretrain_env_kwargs": ctx.base.pretrain_env_kwargs,
                          "base.pretrain_rename_fraction": ctx.base.pretrain_rename_fraction},
        "base": lambda: {"base": settings_json(ctx.base)},
        # a reused probe pass is checked to be this run's measurement, so where the records came from is not a setting
        "probe": lambda: {"probe": {k: v for k, v in settings_json(ctx.probe).items() if k != "scores_from"}},
        "sft": lambda: {"sft": settings_json(ctx.sft)},
        "rl": lambda: {"rl": settings_json(ctx.rl)},
        "eval": lambda: {"eval": settings_json(ctx.eval), "env.eval_splits": ctx.env.eval_splits},
    }
    make = sections.get(name)
    return None if make is None else json.loads(json.dumps(make()))


def check_before_run(ctx: PipelineContext, kept: tuple[str, ...]) -> None:
    """Everything that can be checked without spending compute, before anything is written.

    The settings sections checked themselves when they were built; here the env must exist, the RL module must
    build from its config, and every stage that is kept (finished or half-done) must have been made with this
    config's settings.
    """
    import gymnasium as gym

    import prism_lit.envs  # noqa: F401  (registers the ids)

    try:
        gym.spec(ctx.env_id)
    except gym.error.Error:
        raise ValueError(f"env.id: {ctx.env.id!r} is not a registered environment (try webshop or alfworld, or a "
                         f"gymnasium id registered by an imported package)") from None
    try:
        splits = prism_lit.envs.env_spec(ctx.env_id).splits
    except ValueError:  # an env registered outside prism_lit: its splits are not known here
        splits = None
    for option, split in [("env.train_split", ctx.env.train_split)] + [("env.eval_splits", s)
                                                                        for s in ctx.env.eval_splits]:
        if splits is not None and split not in splits:
            raise ValueError(f"{option}: {ctx.env.id!r} has no split {split!r}; its splits are {', '.join(splits)}")
    if ctx.base.pretrain_rename_fraction and (splits is None or prism_lit.envs.env_spec(ctx.env_id).object_words
                                              is None):
        raise ValueError(f"base.pretrain_rename_fraction: env {ctx.env.id!r} does not name its tasks' target objects "
                         f"(EnvSpec.object_words), so there is nothing to rename; set it to 0")
    if ctx.base.path is not None:
        from prism_lit.policy.loading import check_policy_files

        try:
            check_policy_files(policy_spec(ctx, ctx.base.path))
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"base.path: {err}") from None
    trainer_strategy(ctx.trainer.get("strategy", "auto"))  # a class_path that does not build fails here
    if ctx.rl.enabled:
        try:
            build_rl_module(ctx, base_policy(ctx))
        except (TypeError, ValueError) as err:
            raise ValueError(f"rl.module: {err}") from None
    for name in kept:
        marker = ctx.artifacts.read_marker(name)
        record = marker if marker is not None else ctx.artifacts.read_started(name)
        _compare_settings(ctx, name, (record or {}).get("settings"), finished=marker is not None)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the leaves; an empty mapping has none (a setting added later, empty by default, then
    matches the markers written before it existed)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


# Settings that change only speed or memory, never what a stage produces (each is tested to give the same outputs):
# a stage made with other values of these is reused. RL: greedy drafts, micro-batches, generation batches, env
# threads.
SPEED_ONLY_SETTINGS = frozenset({"draft_tokens", "micro_batch_size", "generation_batch_size", "env_threads"})

# Settings added after markers were first written, with the value that reproduces what those markers' stages did:
# a marker without the key was made with that value.
SETTINGS_ADDED_LATER = {"base.copy_warmup_nonce_fraction": 0.0, "base.pretrain_rename_fraction": 0.0,
                        "base.unfamiliar_pretrain_tasks": 0}
# Settings that older markers of a stage recorded but that never changed its outputs (dotted-key prefixes).
SETTINGS_NO_LONGER_RECORDED = {"tasks": ("env.eval_splits.",)}
# Settings a stage's marker records now that an earlier stage's marker recorded before: (stage, prefix) -> the
# earlier stage. The evaluation panels were recorded by the tasks stage, which they never changed.
SETTINGS_MOVED = {("eval", "env.eval_splits."): "tasks"}


def _compare_settings(ctx: PipelineContext, name: str, recorded: dict[str, Any] | None, finished: bool) -> None:
    """Refuse to reuse a stage whose recorded settings differ from this config's: its artifacts (or, for a
    half-done stage, its checkpoint) would silently stand for settings they were not made with."""
    if recorded is None:  # not started yet, or a marker from before settings were recorded
        return
    old, new = _flatten(recorded), _flatten(stage_settings(ctx, name))
    if old.get(f"{name}.enabled") is False and new.get(f"{name}.enabled") is False:
        # a disabled stage passes its input through: its own settings shape nothing (and a config read back from
        # pipeline_config.json spells a disabled module's defaults out where the original left them implicit)
        old, new = ({k: v for k, v in d.items() if not k.startswith(f"{name}.") or k == f"{name}.enabled"}
                    for d in (old, new))
    old = {**{k: v for k, v in SETTINGS_ADDED_LATER.items() if k in new},
           **{k: v for k, v in old.items() if not k.startswith(SETTINGS_NO_LONGER_RECORDED.get(name, ()))}}
    for (stage, prefix), earlier in SETTINGS_MOVED.items():
        if stage == name and not any(k.startswith(prefix) for k in old):
            before = (ctx.artifacts.read_marker(earlier) or ctx.artifacts.read_started(earlier) or {}).get("settings")
            old.update({k: v for k, v in _flatten(before or {}).items() if k.startswith(prefix)})
    changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
               if old.get(key) != new.get(key) and key.rsplit(".", 1)[-1] not in SPEED_ONLY_SETTINGS]
    if changed:
        state = "was made" if finished else "was started (and would resume)"
        raise ValueError(
            f"pipeline: stage {name!r} in {ctx.run_dir} {state} with other settings than this config's "
            f"({'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}). Pass --rerun '[{name}]' to redo it "
            f"and the stages after it from scratch (the old outputs are moved to {ctx.artifacts.replaced}/), or use "
            f"another run_dir; nothing was changed.")


def _move_aside(art: Artifacts, stages: tuple[str, ...]) -> None:
    """Move the outputs of the stages to redo to ``replaced/<stage>-<time>/`` (a symlinked shared stage: the link)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in stages:
        path = art.stage_dir(name)
        if not (path.exists() or path.is_symlink()):
            continue
        target = art.replaced / f"{name}-{stamp}"
        suffix = 1
        while target.exists() or target.is_symlink():
            suffix += 1
            target = art.replaced / f"{name}-{stamp}-{suffix}"
        art.replaced.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        log.warning("pipeline: --rerun: moved %s to %s", path, target)


def _start_attempt(ctx: PipelineContext, name: str) -> float:
    """Record that ``name`` starts (its settings, the attempt's start time) and clean up after a killed attempt.

    Returns the seconds that earlier, interrupted attempts spent, so compute is counted across attempts (a killed
    attempt is counted up to the last file it wrote).
    """
    art = ctx.artifacts
    stage_dir = art.stage_dir(name)
    last = _last_write(stage_dir, exclude=art.started(name))
    attempts = [{**a, "end": min(last, a.get("end", last))} for a in (art.read_started(name) or {}).get("attempts", [])]
    earlier = sum(max(0.0, a["end"] - a["start"]) for a in attempts)
    if stage_dir.is_dir() and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # under torchrun another rank may be
        for path in stage_dir.rglob(".*"):                                   # writing them: leftovers stay
            if _TEMPORARY.match(path.name):
                log.warning("pipeline: removing %s, left by an interrupted write", path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    atomic_write_json(art.started(name), {"stage": name, "settings": stage_settings(ctx, name),
                                          "attempts": attempts + [{"start": time.time()}]})
    return earlier


def _last_write(directory: Path, exclude: Path) -> float:
    times = [p.stat().st_mtime for p in directory.rglob("*") if p.is_file() and p != exclude] if directory.is_dir() \
        else []
    return max(times, default=0.0)


def _config_dict(ctx: PipelineContext) -> dict[str, Any]:
    # run_dir included: `prism-lit pipeline --config <run>/pipeline_config.json` goes on with that run, not a new
    # one in the default directory (a run dir that was moved needs --run_dir)
    return {
        "run_dir": str(ctx.run_dir.resolve()), "method": ctx.method, "seed": ctx.seed, "env": settings_json(ctx.env), "base": settings_json(ctx.base),
        "probe": settings_json(ctx.probe), "sft": settings_json(ctx.sft), "rl": settings_json(ctx.rl),
        "eval": settings_json(ctx.eval),
        "trainer": {k: v if isinstance(v, (str, int, float, bool, dict, list, type(None))) else plugin_spec(v)
                    for k, v in ctx.trainer.items()},  # a Strategy object (the command line builds one) as its spec
    }
