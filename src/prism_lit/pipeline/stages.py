"""The pipeline's stages, in order: tasks → base → probe → SFT → RL → eval → report.

Each takes the :class:`~prism_lit.pipeline.context.PipelineContext`, writes the files
:class:`~prism_lit.pipeline.context.Artifacts` names under ``<run_dir>/<stage>/`` and returns a small JSON-able
summary that goes into that stage's ``stage.json`` marker. A stage that would train nothing raises
:class:`StageError` instead of recording success.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prism_lit.errors import PrismLitError
from prism_lit.pipeline.context import STAGE_ORDER, PipelineContext, built_once
from prism_lit.policy import PolicySpec

log = logging.getLogger(__name__)


class StageError(PrismLitError, RuntimeError):
    """A stage cannot do what its record would say it did; the message names the setting or file to change."""


# ---------------------------------------------------------------------------------------------- shared
def _progress_callback(stage: str, every_seconds: float = 15.0):
    """A line every ``every_seconds`` with the step count and elapsed time (the pipeline runs without bars)."""
    import lightning as L

    class StageProgress(L.Callback):
        def __init__(self) -> None:
            self.start = self.last = time.perf_counter()

        def on_train_batch_end(self, trainer, *args: Any) -> None:
            now = time.perf_counter()
            if now - self.last >= every_seconds:
                self.last = now
                total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
                if total is None and trainer.num_training_batches != float("inf") and trainer.max_epochs:
                    total = int(trainer.num_training_batches) * trainer.max_epochs
                loss = trainer.callback_metrics.get("train/loss")
                log.warning("pipeline: stage %-6s step %d%s, %.0f s%s", stage, trainer.global_step,
                            f"/{total}" if total else "", now - self.start,
                            f", train/loss {float(loss):.4f}" if loss is not None else "")

    return StageProgress()


def _metrics_file(path: Path):
    """A callback that appends each training step's logged numbers to ``path`` (JSON lines, rank 0): what the
    report summarises (TensorBoard has the same values)."""
    import lightning as L

    class MetricsFile(L.Callback):
        def on_train_batch_end(self, trainer, *args: Any) -> None:
            if not trainer.is_global_zero:
                return
            row = {"step": trainer.global_step}
            for key, value in sorted(trainer.callback_metrics.items()):
                number = float(value)
                if math.isfinite(number):
                    row[key] = number
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return MetricsFile()


def _progress_lines(stage: str, what: str, every_seconds: float = 15.0) -> Callable[[int, int, float], None]:
    """``on_step(step, total, loss)`` that logs a line every ``every_seconds`` (for loops outside a Trainer)."""
    start = last = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= every_seconds or step == total:
            last = now
            log.warning("pipeline: stage %-6s %s step %d/%d, %.0f s, loss %.4f", stage, what, step, total,
                        now - start, loss)

    return on_step


def _trainer(ctx: PipelineContext, stage: str, checkpoint_every_n_steps: int | None = None, **kwargs: Any):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    stage_dir = ctx.artifacts.stage_dir(stage)
    settings = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
                "log_every_n_steps": 5,
                # the DataModule shuffles when it builds a loader: rebuild every epoch for a new order
                "reload_dataloaders_every_n_epochs": 1, **ctx.trainer, **kwargs}
    settings["strategy"] = trainer_strategy(settings.get("strategy", "auto"))
    callbacks = list(settings.pop("callbacks", []))
    if not settings.get("enable_progress_bar"):
        callbacks.append(_progress_callback(stage))
    if settings.get("enable_checkpointing", True):
        # RL optimises manually; its checkpoint holds the state after the iteration's update, which is what resume
        # wants, so Lightning's warning about pre-optimisation state does not apply
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        # save_top_k=1 with no monitor keeps the newest checkpoint and last.ckpt links to it: written every epoch
        # (or every n steps), so a killed stage resumes there (save_top_k=0 writes last.ckpt only at the end)
        callbacks.append(ModelCheckpoint(dirpath=stage_dir / "checkpoints", save_last="link", save_top_k=1,
                                         every_n_train_steps=checkpoint_every_n_steps or None,
                                         every_n_epochs=None if checkpoint_every_n_steps else 1))
    return L.Trainer(
        default_root_dir=stage_dir, logger=TensorBoardLogger(stage_dir, name="tb", version=""), callbacks=callbacks,
        **settings,
    )


def trainer_strategy(spec: Any) -> Any:
    """``trainer.strategy`` for one Trainer stage: a name (``ddp``, ``auto``) as is; ``{class_path, init_args}``
    (e.g. :class:`~prism_lit.distributed.FSDP2Strategy` with its mixed precision) built, and a Strategy object
    (what the command line makes of that dict) copied, afresh for every stage: a Strategy belongs to one Trainer."""
    if isinstance(spec, str):
        return spec
    from lightning.pytorch.strategies import Strategy

    from prism_lit.pipeline.config import build_plugin

    if isinstance(spec, Strategy):
        return copy.deepcopy(spec)
    return build_plugin(spec, Strategy, "trainer.strategy")


def resume_checkpoint(ctx: PipelineContext, stage: str) -> str | None:
    """The stage's ``last.ckpt`` to resume from, after checking it is a whole file."""
    from prism_lit.io import check_checkpoint

    path = ctx.artifacts.last_checkpoint(stage)
    if not path.is_file():
        return None
    check_checkpoint(path, after_discard=f"the {stage!r} stage then starts again from its beginning (or pass "
                                         f"--rerun '[{stage}]')")
    return str(path)


def _fit(ctx: PipelineContext, stage: str, trainer, module, data) -> None:
    """``trainer.fit`` resuming from the stage's checkpoint; a run that made no optimisation step is an error."""
    trainer.fit(module, data, ckpt_path=resume_checkpoint(ctx, stage))
    if trainer.global_step == 0:
        raise StageError(f"stage {stage!r} trained 0 steps (no batch reached the optimiser); nothing is marked done. "
                         f"Check the stage's data and its epochs/max_steps settings.")


def policy_spec(ctx: PipelineContext, path: str, **kwargs: Any) -> PolicySpec:
    """A policy at ``path`` with the run's model settings (dtype, attention, activation checkpointing, chat
    template and its settings), so every stage renders and loads the model the same way."""
    return PolicySpec(path=path, dtype=ctx.base.dtype, attn_implementation=ctx.base.attn_implementation,
                      gradient_checkpointing=ctx.base.gradient_checkpointing, chat_template=ctx.base.chat_template,
                      chat_template_kwargs=dict(ctx.base.chat_template_kwargs), **kwargs)


# ---------------------------------------------------------------------------------------------- tasks
def make_tasks(ctx: PipelineContext) -> dict[str, Any]:
    """The expert corpus D (train split) and, for the embedded base model, a disjoint pre-training set."""
    from prism_lit.data.schema import read_trajectories, write_trajectories
    from prism_lit.envs.experts import write_expert_dataset

    art = ctx.artifacts
    info: dict[str, Any] = {}
    if ctx.probe.corpus_file is not None:
        corpus = read_trajectories(ctx.probe.corpus_file)  # strict: a bad line names the file, line and field
        train = set(split_task_ids(ctx, ctx.env.train_split))
        foreign = [t.task_id for t in corpus if t.task_id not in train]
        if foreign:
            raise StageError(f"probe.corpus_file {ctx.probe.corpus_file}: {len(foreign)} of {len(corpus)} trajectories "
                             f"have task ids that are not tasks of env.train_split {ctx.env.train_split!r} (e.g. "
                             f"{foreign[:3]}), so RL could not replay them; import the corpus with `prism-lit import "
                             f"... --env {ctx.env.id}` against the same env settings")
        write_trajectories(art.corpus, corpus)
        info["corpus"] = {"path": str(art.corpus), "count": len(corpus), "source": ctx.probe.corpus_file}
    else:
        info["corpus"] = write_expert_dataset(
            ctx.env_id, ctx.probe.corpus_tasks, art.corpus, ctx.env.protocol,
            split=ctx.env.train_split, seed=ctx.seed, env_kwargs=ctx.env.kwargs,
            expert_kwargs=ctx.env.expert_kwargs,
        )
    if ctx.base.path is None:
        kwargs = {**ctx.env.kwargs, **ctx.base.pretrain_env_kwargs}
        if ctx.base.familiar_task_types:
            kwargs["task_types"] = list(ctx.base.familiar_task_types)
        corpus_tasks = {t.task_id for t in read_trajectories(art.corpus)}
        # one file per process: under torchrun every rank makes the (same) tasks, and one must not remove another's
        candidates = art.pretrain.with_name(f"pretrain_all.{os.getpid()}.jsonl")
        stats = write_expert_dataset(
            ctx.env_id, ctx.base.pretrain_tasks * 2, candidates, ctx.env.protocol,
            split=ctx.env.train_split, seed=ctx.seed + 7919, env_kwargs=kwargs, expert_kwargs=ctx.env.expert_kwargs,
        )
        fresh = [t for t in read_trajectories(candidates) if t.task_id not in corpus_tasks][: ctx.base.pretrain_tasks]
        candidates.unlink()
        unfamiliar = _unfamiliar_pretrain_episodes(ctx, corpus_tasks) if ctx.base.unfamiliar_pretrain_tasks else []
        fresh += unfamiliar
        if ctx.base.pretrain_rename_fraction:
            from prism_lit.data.augment import rename_objects
            from prism_lit.envs import env_spec

            fresh = rename_objects(fresh, env_spec(ctx.env_id).object_words_function(),
                                   ctx.base.pretrain_rename_fraction, seed=ctx.seed + 104729)
        write_trajectories(art.pretrain, fresh)
        info["pretrain"] = {**stats, "path": str(art.pretrain), "count": len(fresh),
                            "renamed": sum("renamed" in t.meta for t in fresh),
                            "task_types": ctx.base.familiar_task_types,
                            "unfamiliar": dict(Counter(t.task_type for t in unfamiliar))}
    return info


def _unfamiliar_pretrain_episodes(ctx: PipelineContext, corpus_tasks: set[str]) -> list:
    """``base.unfamiliar_pretrain_tasks`` expert episodes of the task types outside ``base.familiar_task_types``,
    from the train split of ``env.kwargs`` without the corpus's tasks, ids prefixed ``unfamiliar-``."""
    from prism_lit.data.schema import read_trajectories
    from prism_lit.envs.experts import write_expert_dataset
    from prism_lit.rl.evaluation import default_task_types

    n = ctx.base.unfamiliar_pretrain_tasks
    train_kwargs = {**ctx.env.kwargs, "split": ctx.env.train_split}
    others = [t for t in default_task_types(ctx.env_id, train_kwargs) if t not in set(ctx.base.familiar_task_types)]
    if not others:
        raise StageError(f"base.unfamiliar_pretrain_tasks is {n}, but env {ctx.env.id!r} names no task types outside "
                         f"base.familiar_task_types {ctx.base.familiar_task_types}")
    from prism_lit.rl.rollout import env_task_ids, make_env

    env_kwargs = {**ctx.env.kwargs, "task_types": others}
    env = make_env(ctx.env_id, {**env_kwargs, "split": ctx.env.train_split})
    try:
        ids = set(env_task_ids(env))
    finally:
        env.close()
    in_corpus = len(ids & corpus_tasks)
    if len(ids) - in_corpus < n:  # before any episode is recorded
        raise StageError(f"base.unfamiliar_pretrain_tasks: {n} asked, but the train split of env.kwargs has only "
                         f"{len(ids) - in_corpus} tasks of the types {others} outside the corpus; ask for fewer or "
                         f"enlarge the split")
    path = ctx.artifacts.pretrain.with_name(f"pretrain_unfamiliar.{os.getpid()}.jsonl")
    # the first n + in_corpus tasks of the seeded order hold at least n that are not corpus tasks
    write_expert_dataset(ctx.env_id, n + in_corpus, path, ctx.env.protocol, split=ctx.env.train_split,
                         seed=ctx.seed + 15485863, env_kwargs=env_kwargs,
                         expert_kwargs=ctx.env.expert_kwargs)
    episodes = [t for t in read_trajectories(path) if t.task_id not in corpus_tasks]
    path.unlink()
    distinct = list({t.task_id: t for t in episodes}.values())[:n]
    if len(distinct) < n:  # an env whose seeded order is not its task_ids
        raise StageError(f"base.unfamiliar_pretrain_tasks: {n} asked, but only {len(distinct)} distinct tasks of the "
                         f"types {others} outside the corpus were recorded")
    for t in distinct:
        t.id = f"unfamiliar-{t.id}"
    return distinct


# ---------------------------------------------------------------------------------------------- base
def base_policy(ctx: PipelineContext) -> PolicySpec:
    return policy_spec(ctx, ctx.base.path if ctx.base.path is not None else str(ctx.artifacts.base_model))


def prepare_base(ctx: PipelineContext) -> dict[str, Any]:
    """A local model as given, or the embedded default pre-trained on the familiar task types only."""
    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.policy import build_embedded_default
    from prism_lit.policy.embedded import MARKER_FILE as EMBEDDED_MARKER
    from prism_lit.policy.embedded import corpus_from_files
    from prism_lit.sft import SFTModule

    if ctx.base.path is not None:
        if not Path(ctx.base.path).is_dir():
            raise FileNotFoundError(f"base.path: {ctx.base.path!r} is not a directory (nothing is downloaded)")
        return {"path": ctx.base.path, "prepared": False}
    art = ctx.artifacts
    # under torchrun, rank 0 builds the initial weights (and their copy warm-up) and the other ranks load them
    init = built_once(art.base_init, EMBEDDED_MARKER, lambda: build_embedded_default(
        art.base_init, corpus_from_files([art.corpus, art.pretrain]), ctx.base.embedded))
    if ctx.base.copy_warmup_steps > 0:
        init = built_once(art.base_warm, "warmup.json", lambda: _copy_warmup(ctx, init, art.base_warm))
    module = SFTModule(policy=policy_spec(ctx, str(init)), lr=ctx.base.pretrain_lr, export_dir=str(art.base_model),
                       warmup_steps=10, schedule="cosine")
    data = TrajectoryDataModule(train_files=[str(art.pretrain)], batch_size=ctx.base.pretrain_batch_size,
                                context_weight=ctx.base.pretrain_context_weight,
                                max_length=ctx.sft.max_length, seed=ctx.seed, protocol=ctx.env.protocol)
    trainer = _trainer(ctx, "base", max_epochs=ctx.base.pretrain_epochs)
    _fit(ctx, "base", trainer, module, data)
    return {"path": str(art.base_model), "prepared": True, "init": str(init), "steps": trainer.global_step,
            "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))), "data": data.token_stats}


def _copy_warmup(ctx: PipelineContext, init: Path, out: Path) -> Path:
    """The init model after the copy warm-up, saved to ``out`` (kept: a resumed base stage reuses it)."""
    from prism_lit.data.schema import read_trajectories
    from prism_lit.io import atomic_directory
    from prism_lit.policy import load_policy
    from prism_lit.policy.copy_warmup import task_words, train_copy

    # Every task's words, the corpus's unfamiliar types included: a pre-trained LLM can copy any word it has
    # tokens for, and words the pre-training never shows would otherwise keep their random embeddings.
    first_observations = [next(m.content for m in t.messages if m.role == "user")
                          for path in (ctx.artifacts.pretrain, ctx.artifacts.corpus)
                          for t in read_trajectories(path)]
    words = task_words(first_observations)
    model, tokenizer = load_policy(PolicySpec(path=str(init)))
    half = ctx.base.copy_warmup_steps // 2
    losses = train_copy(model, tokenizer, words, bare_steps=half, chat_steps=ctx.base.copy_warmup_steps - half,
                        seed=ctx.seed, nonce_fraction=ctx.base.copy_warmup_nonce_fraction,
                        on_step=_progress_lines("base", "copy warm-up"))
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "warmup.json").write_text(json.dumps(
            {"steps": len(losses), "words": len(words), "nonce_fraction": ctx.base.copy_warmup_nonce_fraction,
             "first_loss": losses[0], "last_loss": losses[-1]}) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- probe
def probe_measurement(ctx: PipelineContext) -> dict[str, Any]:
    """What this run's probe records depend on (probe_meta.json's ``measured_with``): the base model's files and
    the corpus by content, and how trajectories become tokens. Batch size and the token cap only change speed."""
    from prism_lit.pipeline.config import settings_json
    from prism_lit.probe.reuse import measurement_key

    spec = base_policy(ctx)
    return measurement_key([spec.path], ctx.artifacts.corpus, max_length=ctx.probe.max_length, dtype=spec.dtype,
                           chat_template=spec.chat_template, chat_template_kwargs=spec.chat_template_kwargs,
                           protocol=settings_json(ctx.env.protocol))


def probe_and_route(ctx: PipelineContext) -> dict[str, Any]:
    """Probe the frozen base model on the corpus and route every trajectory (probe.jsonl, partition.json).

    A router that reads no score (all-SFT, all-RL, random) routes the corpus without a probe pass; with
    ``probe.scores_from`` the records of an earlier pass that measured the same thing are routed instead.
    """
    from prism_lit.data.schema import read_trajectories
    from prism_lit.probe import run_probe
    from prism_lit.probe.partition import save_partition
    from prism_lit.probe.records import ProbeRecord
    from prism_lit.probe.runner import finalize_probe

    art = ctx.artifacts
    router = ctx.probe.router
    if getattr(router, "seed", 0) is None:  # the run's seed varies a random routing unless the config fixes one
        router = copy.copy(router)
        router.seed = ctx.seed
    if hasattr(router, "env_id") and router.env_id is None:  # a router that asks the env: the env RL plays
        router = copy.copy(router)
        router.env_id, router.env_kwargs = ctx.env_id, rl_env_kwargs(ctx)
    if not getattr(router, "needs_scores", True):
        records = [ProbeRecord.unmeasured(t.id, t.task_id, t.task_type) for t in read_trajectories(art.corpus)]
        partition = router.route(sorted(records, key=lambda r: r.id))
        save_partition(art.partition, partition)
        reused = {"probed": False}
    elif ctx.probe.scores_from is not None:
        from prism_lit.probe.reuse import probe_source, reuse_records

        source = probe_source(ctx.probe.scores_from)[0].parent
        if source.resolve() == art.probe_dir.resolve():
            raise ValueError(f"probe.scores_from: {ctx.probe.scores_from!r} is this run's own probe directory")
        records, meta = reuse_records(source, probe_measurement(ctx),
                                      [t.id for t in read_trajectories(art.corpus)])
        partition = finalize_probe(records, meta["units"], router, art.probe_dir,
                                   {"measured_with": meta["measured_with"], "scores_from": str(source),
                                    "probe_seconds": meta.get("probe_seconds")})
        # the measured pass's seconds: what this method's probe costs when run alone (report.compute_seconds)
        reused = {"probed": False, "scores_from": str(source), "measured_seconds": meta.get("probe_seconds")}
    else:
        from prism_lit.data.datamodule import TrajectoryDataModule
        from prism_lit.policy import load_policy

        spec = base_policy(ctx)
        # gradient_checkpointing: the probe then recomputes each layer in its backward (same norms, less memory)
        model, tokenizer = load_policy(spec)
        model.to(eval_device(ctx))
        data = TrajectoryDataModule(train_files=[str(art.corpus)], batch_size=ctx.probe.batch_size,
                                    max_length=ctx.probe.max_length, max_tokens=ctx.probe.max_tokens, seed=ctx.seed,
                                    protocol=ctx.env.protocol)
        data.tokenizer = tokenizer  # loaded with the run's chat-template settings
        data.prepare_data()
        data.setup("fit")
        partition = run_probe(model, data.train_dataloader(), router=router, output_dir=art.probe_dir,
                              meta={"measured_with": probe_measurement(ctx)})
        reused = {"probed": True}
    return {"router": partition.router, "score": partition.score, "threshold": partition.threshold,
            **reused, "n_sft": len(partition.sft_ids), "n_rl": len(partition.rl_ids),
            "n_rl_tasks": len(partition.rl_task_ids)}


# ---------------------------------------------------------------------------------------------- SFT
def sft_policy(ctx: PipelineContext) -> PolicySpec:
    """The policy after SFT (the base when SFT was skipped)."""
    if not ctx.stage_info("sft").get("trained"):
        return base_policy(ctx)
    if ctx.sft.lora is not None:
        return policy_spec(ctx, base_policy(ctx).path, adapter_path=str(ctx.artifacts.sft_export))
    return policy_spec(ctx, str(ctx.artifacts.sft_export))


def _sft_ids(ctx: PipelineContext) -> list[str] | None:
    """The trajectories SFT trains on (``None``: the whole corpus); partition ids must all be in the corpus."""
    from prism_lit.data.schema import read_trajectories
    from prism_lit.probe import load_partition

    if ctx.sft.data == "all":
        return None
    art = ctx.artifacts
    ids = load_partition(art.partition).sft_ids
    missing = sorted(set(ids) - {t.id for t in read_trajectories(art.corpus)})
    if missing:
        raise StageError(f"{art.partition}: {len(missing)} SFT trajectory id(s) are not in the corpus {art.corpus} "
                         f"(e.g. {missing[:3]}); the partition belongs to another corpus. Pass --rerun '[probe]'.")
    return ids


def train_sft(ctx: PipelineContext) -> dict[str, Any]:
    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.sft import SFTModule

    art = ctx.artifacts
    if not ctx.sft.enabled:
        return {"trained": False, "reason": "sft.enabled is false"}
    ids = _sft_ids(ctx)
    if ids is not None and not ids:
        return {"trained": False, "reason": "the router sent no trajectory to SFT"}
    base = base_policy(ctx)
    module = SFTModule(policy=policy_spec(ctx, base.path, lora=ctx.sft.lora), lr=ctx.sft.lr,
                       warmup_steps=ctx.sft.warmup_steps, schedule=ctx.sft.schedule, export_dir=str(art.sft_export))
    data = TrajectoryDataModule(
        train_files=[str(art.corpus)], batch_size=ctx.sft.batch_size,
        max_length=ctx.sft.max_length, max_tokens=ctx.sft.max_tokens, seed=ctx.seed,
        context_weight=ctx.sft.context_weight, protocol=ctx.env.protocol,
        partition_path=str(art.partition) if ids is not None else None,
    )
    trainer = _trainer(ctx, "sft", max_epochs=ctx.sft.epochs)
    _fit(ctx, "sft", trainer, module, data)
    n_train = len(ids) if ids is not None else len(data.train_rows)
    return {"trained": True, "steps": trainer.global_step, "n_train": n_train,
            "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))), "data": data.token_stats}


# ---------------------------------------------------------------------------------------------- RL
def rl_task_ids(ctx: PipelineContext) -> list[str]:
    from prism_lit.data.schema import read_trajectories
    from prism_lit.probe import load_partition

    if ctx.rl.tasks == "all":
        return sorted({t.task_id for t in read_trajectories(ctx.artifacts.corpus)})
    return load_partition(ctx.artifacts.partition).rl_task_ids


def split_task_ids(ctx: PipelineContext, split: str) -> list[str]:
    """Every task id of ``split`` in the configured env (in the env's own order)."""
    import gymnasium as gym

    import prism_lit.envs  # noqa: F401

    env = gym.make(ctx.env_id, split=split, **ctx.env.kwargs)
    try:
        return list(env.unwrapped.task_ids)
    finally:
        env.close()


def check_rl_tasks(ctx: PipelineContext, tasks: list[str]) -> None:
    """RL trains on tasks of the train split only, and never on a task of an evaluation panel."""
    train = set(split_task_ids(ctx, ctx.env.train_split))
    foreign = [t for t in tasks if t not in train]
    if foreign:
        raise StageError(f"RL tasks {foreign[:3]}{' ...' if len(foreign) > 3 else ''} ({len(foreign)} of {len(tasks)}) "
                         f"are not tasks of env.train_split {ctx.env.train_split!r}; RL may only train on that split "
                         f"(the corpus in {ctx.artifacts.corpus} was made from another split or env setting).")
    for split, n in ctx.env.eval_splits.items():
        shared = sorted(set(tasks) & set(panel_task_ids(ctx, split, n)))
        if shared:
            raise StageError(f"RL tasks {shared[:3]} ({len(shared)}) are in the evaluation panel of split {split!r} "
                             f"(env.eval_splits); training on evaluation tasks would inflate the results. "
                             f"Evaluate on another split.")


def final_policy(ctx: PipelineContext) -> PolicySpec:
    marker = ctx.stage_info("rl")
    if not marker.get("trained"):
        return sft_policy(ctx)
    start = sft_policy(ctx)
    export = str(ctx.artifacts.rl_export)
    if start.adapter_path is not None or marker.get("adapter"):
        return policy_spec(ctx, start.path, adapter_path=export)
    return policy_spec(ctx, export)


def build_rl_module(ctx: PipelineContext, policy: PolicySpec):
    """The configured RL module for ``policy`` on the train split (built before the first stage as a check)."""
    return ctx.rl.module(policy, ctx.env.protocol, ctx.env_id, rl_env_kwargs(ctx),
                         export_dir=str(ctx.artifacts.rl_export), seed=ctx.seed)


def rl_env_kwargs(ctx: PipelineContext) -> dict[str, Any]:
    """The env kwargs RL plays with: ``env.kwargs``, then ``rl.env_kwargs`` (RL-only), on the train split."""
    return {**ctx.env.kwargs, **ctx.rl.env_kwargs, "split": ctx.env.train_split}


def train_rl(ctx: PipelineContext) -> dict[str, Any]:
    from prism_lit.rl.tasks import RLTaskDataModule

    if not ctx.rl.enabled:
        return {"trained": False, "reason": "rl.enabled is false"}
    tasks = rl_task_ids(ctx)
    if not tasks:
        return {"trained": False, "reason": "no task was routed to RL"}
    check_rl_tasks(ctx, tasks)
    start = sft_policy(ctx)
    module = build_rl_module(ctx, start)
    data = RLTaskDataModule(env_id=ctx.env_id, env_kwargs=rl_env_kwargs(ctx), task_ids=tasks, seed=ctx.seed,
                            **ctx.rl.data)
    # the eval stage measures every policy on fixed panels; no validation loop inside RL training
    iterations = ctx.rl.max_steps or max(1, math.ceil(ctx.rl.epochs * len(tasks) / data.tasks_per_batch))
    trainer = _trainer(ctx, "rl", checkpoint_every_n_steps=ctx.rl.checkpoint_every_n_steps, max_steps=iterations,
                       max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                       callbacks=[*ctx.trainer.get("callbacks", []), _metrics_file(ctx.artifacts.rl_metrics)])
    _fit(ctx, "rl", trainer, module, data)
    from prism_lit.pipeline.report import training_metrics

    return {"trained": True, "steps": trainer.global_step, "iterations": iterations, "n_tasks": len(tasks),
            "adapter": start.adapter_path is not None, "strategy": type(trainer.strategy).__name__,
            "world_size": trainer.world_size, "env_summary": training_metrics(ctx.run_dir).get("summary", {})}


# ---------------------------------------------------------------------------------------------- eval
def panel_task_ids(ctx: PipelineContext, split: str, n: int) -> list[str]:
    """The fixed evaluation panel of ``split``: ``n`` of its task ids drawn with a fixed seed, the same for every
    method and seed (the split's own order groups tasks by type, so its first ``n`` would not be a fair panel)."""
    return fixed_panel(split_task_ids(ctx, split), split, n)


def fixed_panel(task_ids: list[str], split: str, n: int) -> list[str]:
    """``n`` of a split's task ids in the panel's fixed order (position i is played with env seed i)."""
    import random

    ids = sorted(task_ids)
    random.Random(f"panel/{split}").shuffle(ids)
    return ids[:n]


def report_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """evaluate_policy's metrics under the report's names, with the per-task-type rates grouped."""
    per_type: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if "/" in key:
            name, task_type = key.split("/", 1)
            per_type.setdefault(task_type, {})["score" if name == "mean_score" else name] = value
    return {
        "success_rate": metrics["success_rate"], "score": metrics["mean_score"], "mean_steps": metrics["mean_steps"],
        "invalid_rate": metrics["invalid_action_rate"], "episodes": metrics["episodes"], "per_task_type": per_type,
    }


def eval_device(ctx: PipelineContext):
    """Where evaluation generates: the accelerator the trainer settings ask for, when there is one."""
    import torch

    accelerator = str(ctx.trainer.get("accelerator", "cpu")).lower()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


POLICIES: dict[str, Callable[[PipelineContext], PolicySpec]] = {
    "base": base_policy, "sft": sft_policy, "final": final_policy}


def _ranks() -> tuple[int, int]:
    """``(rank, world size)`` of an initialised process group (a ``torchrun`` launch), else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def episode_record(policy: str, split: str, ep: Any, scorer: Any) -> dict[str, Any]:
    """One line of ``eval/episodes.jsonl``: what paired differences between policies, methods and seeds read."""
    return {"policy": policy, "split": split, "task_id": ep.task_id, "env_seed": ep.seed, "task_type": ep.task_type,
            "won": bool(ep.won), "score": float(ep.score), "steps": len(ep.steps), "invalid": ep.num_invalid,
            **({"outcomes": outcomes} if (outcomes := scorer.episode(ep.info)) else {})}


def evaluate(ctx: PipelineContext) -> dict[str, Any]:
    """Greedy episodes of every policy on the fixed panels. Under several ranks each plays a share of every panel
    (task i of the panel on rank i mod world size, with its own env seed i); the metrics are summed over ranks
    (torchmetrics) and the episodes gathered, so the results are those of one process, written by rank 0."""
    import torch.distributed as dist

    from prism_lit.envs import env_metrics
    from prism_lit.io import atomic_write_json, atomic_write_text
    from prism_lit.policy import load_policy
    from prism_lit.rl.evaluation import evaluate_policy

    scorer = env_metrics(ctx.env_id)  # the env's own numbers (IFEval's scores for instruction following)
    rank, world = _ranks()
    device = eval_device(ctx)
    results: dict[str, Any] = {}
    episodes: list[dict[str, Any]] = []
    played: dict[str, str] = {}  # policy spec -> the name it was evaluated under
    for name in ctx.eval.policies:
        spec = POLICIES[name](ctx)
        if (same := played.get(repr(spec))) is not None:
            # the same weights (RL-100's "sft" is its base; a stage that was skipped): greedy episodes repeat exactly
            log.warning("pipeline: stage eval   %s is the %s policy (the same weights): its episodes are %s's", name,
                        same, same)
            results[name] = copy.deepcopy(results[same])
            episodes += [{**e, "policy": name} for e in episodes if e["policy"] == same]
            continue
        played[repr(spec)] = name
        model, tokenizer = load_policy(spec)
        model.to(device).eval()
        results[name] = {}
        for split, n in ctx.env.eval_splits.items():
            panel = panel_task_ids(ctx, split, n)
            metrics = evaluate_policy(
                model, tokenizer, ctx.env.protocol, ctx.env_id, {**ctx.env.kwargs, "split": split},
                panel[rank::world], seeds=list(range(len(panel)))[rank::world], max_steps=ctx.eval.max_steps,
                batch_size=ctx.eval.batch_size, max_new_tokens=ctx.eval.max_new_tokens, return_episodes=True,
            )
            episodes += [episode_record(name, split, ep, scorer) for ep in metrics.pop("episodes_list")]
            results[name][split] = report_metrics(metrics)
            log.warning("pipeline: stage eval   %s on %d %s tasks: success %.3f, score %.3f", name, n, split,
                        results[name][split]["success_rate"], results[name][split]["score"])
        del model
    if world > 1:
        shares: list[Any] = [None] * world
        dist.all_gather_object(shares, episodes)
        order = {(p, s): i for i, (p, s) in enumerate((p, s) for p in ctx.eval.policies for s in ctx.env.eval_splits)}
        episodes = sorted((e for share in shares for e in share),
                          key=lambda e: (order[e["policy"], e["split"]], e["env_seed"]))
    for name, splits in results.items():  # from every rank's episodes: the env's panel metrics
        for split, entry in splits.items():
            panel = scorer.panel([e["outcomes"] for e in episodes
                                  if e["policy"] == name and e["split"] == split and "outcomes" in e])
            if panel:
                entry["env_metrics"] = panel
    if rank == 0:
        # per-episode outcomes: what paired differences between policies, methods and seeds are computed from
        atomic_write_text(ctx.artifacts.eval_episodes, "".join(json.dumps(e) + "\n" for e in episodes))
        atomic_write_json(ctx.artifacts.eval_results, results)
    if world > 1:
        dist.barrier()
    return {name: {split: {k: v for k, v in m.items() if k in ("success_rate", "score", "env_metrics")}
                   for split, m in splits.items()} for name, splits in results.items()}


# ---------------------------------------------------------------------------------------------- report
def write_report(ctx: PipelineContext) -> dict[str, Any]:
    from prism_lit.pipeline.report import build_report

    report = build_report(ctx.run_dir)
    return {"report": str(ctx.artifacts.report), "final": report["eval"].get("final", {})}


STAGE_FUNCTIONS: dict[str, Callable[[PipelineContext], dict[str, Any]]] = {
    "tasks": make_tasks, "base": prepare_base, "probe": probe_and_route, "sft": train_sft, "rl": train_rl,
    "eval": evaluate, "report": write_report,
}
assert tuple(STAGE_FUNCTIONS) == STAGE_ORDER
