"""The pipeline's stages. Each takes the context, writes files under ``<run_dir>/<stage>/`` and returns a small
JSON-able summary that goes into that stage's ``stage.json`` marker."""

from __future__ import annotations

import importlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from prism_lit.pipeline.run import PipelineContext
from prism_lit.policy import PolicySpec

log = logging.getLogger(__name__)


def instantiate(spec: dict[str, Any], **overrides: Any) -> Any:
    """Build ``{"class_path": "pkg.mod.Class", "init_args": {...}}``; ``overrides`` win over init_args."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"expected {{'class_path': ..., 'init_args': {{...}}}}, got {spec!r}")
    module_name, _, class_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"class_path {spec['class_path']!r} cannot be imported: {err}") from None
    return cls(**{**spec.get("init_args", {}), **overrides})


def _trainer(ctx: PipelineContext, stage_dir: Path, checkpoint_every_n_steps: int | None = None, **kwargs: Any):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    settings = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
                "log_every_n_steps": 5,
                # the DataModule shuffles when it builds a loader: rebuild every epoch for a new order
                "reload_dataloaders_every_n_epochs": 1, **ctx.trainer, **kwargs}
    callbacks = list(settings.pop("callbacks", []))
    if settings.get("enable_checkpointing", True):
        # RL optimises manually; its checkpoint holds the state after the iteration's update, which is what resume
        # wants, so Lightning's warning about pre-optimisation state does not apply
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        callbacks.append(ModelCheckpoint(dirpath=stage_dir / "checkpoints", save_last=True, save_top_k=0,
                                         every_n_train_steps=checkpoint_every_n_steps or None))
    return L.Trainer(
        default_root_dir=stage_dir, logger=TensorBoardLogger(stage_dir, name="tb", version=""), callbacks=callbacks,
        **settings,
    )


def _last_ckpt(stage_dir: Path) -> str | None:
    path = stage_dir / "checkpoints" / "last.ckpt"
    return str(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- tasks
def make_tasks(ctx: PipelineContext) -> dict[str, Any]:
    """The expert corpus D (train split) and, for the embedded base model, a disjoint pre-training set."""
    from prism_lit.data.schema import read_trajectories, write_trajectories
    from prism_lit.envs.experts import write_expert_dataset

    out = ctx.path("tasks")
    info: dict[str, Any] = {}
    info["corpus"] = write_expert_dataset(
        ctx.env_id, ctx.probe.corpus_tasks, out / "corpus.jsonl", ctx.env.protocol,
        split=ctx.env.train_split, seed=ctx.seed, env_kwargs=ctx.env.kwargs, expert_kwargs=ctx.env.expert_kwargs,
    )
    if ctx.base.path is None:
        kwargs = dict(ctx.env.kwargs)
        if ctx.base.familiar_task_types:
            kwargs["task_types"] = list(ctx.base.familiar_task_types)
        corpus_tasks = {t.task_id for t in read_trajectories(out / "corpus.jsonl")}
        stats = write_expert_dataset(
            ctx.env_id, ctx.base.pretrain_tasks * 2, out / "pretrain_all.jsonl", ctx.env.protocol,
            split=ctx.env.train_split, seed=ctx.seed + 7919, env_kwargs=kwargs, expert_kwargs=ctx.env.expert_kwargs,
        )
        fresh = [t for t in read_trajectories(out / "pretrain_all.jsonl") if t.task_id not in corpus_tasks]
        write_trajectories(out / "pretrain.jsonl", fresh[: ctx.base.pretrain_tasks])
        (out / "pretrain_all.jsonl").unlink()
        info["pretrain"] = {**stats, "path": str(out / "pretrain.jsonl"), "count": len(fresh[: ctx.base.pretrain_tasks]),
                            "task_types": ctx.base.familiar_task_types}
    return info


# ---------------------------------------------------------------------------------------------- base
def base_policy(ctx: PipelineContext) -> PolicySpec:
    path = ctx.base.path if ctx.base.path is not None else str(ctx.path("base", "model"))
    return PolicySpec(path=path)


def prepare_base(ctx: PipelineContext) -> dict[str, Any]:
    """A local model as given, or the embedded default pre-trained on the familiar task types only."""
    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.policy import build_embedded_default
    from prism_lit.policy.embedded import corpus_from_files
    from prism_lit.sft import SFTModule

    if ctx.base.path is not None:
        if not Path(ctx.base.path).is_dir():
            raise FileNotFoundError(f"base.path: {ctx.base.path!r} is not a directory (nothing is downloaded)")
        return {"path": ctx.base.path, "prepared": False}
    stage = ctx.path("base")
    init = build_embedded_default(
        stage / "init", corpus_from_files([ctx.path("tasks", "corpus.jsonl"), ctx.path("tasks", "pretrain.jsonl")]),
        ctx.base.embedded,
    )
    if ctx.base.copy_warmup_steps > 0:
        init = _copy_warmup(ctx, init, stage / "warm")
    module = SFTModule(policy=PolicySpec(path=str(init)), lr=ctx.base.pretrain_lr, export_dir=str(stage / "model"),
                       warmup_steps=10, schedule="cosine")
    data = TrajectoryDataModule(train_files=[str(ctx.path("tasks", "pretrain.jsonl"))],
                                batch_size=ctx.base.pretrain_batch_size, 
                                context_weight=ctx.base.pretrain_context_weight,
                                max_length=ctx.sft.max_length, seed=ctx.seed)
    trainer = _trainer(ctx, stage, max_epochs=ctx.base.pretrain_epochs)
    trainer.fit(module, data, ckpt_path=_last_ckpt(stage))
    return {"path": str(stage / "model"), "prepared": True, "init": str(init), "steps": trainer.global_step,
            "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


def _copy_warmup(ctx: PipelineContext, init: Path, out: Path) -> Path:
    """The init model after the copy warm-up, saved to ``out`` (kept: a resumed base stage reuses it)."""
    from prism_lit.data.schema import read_trajectories
    from prism_lit.io import atomic_directory
    from prism_lit.policy import load_policy
    from prism_lit.policy.copy_warmup import task_words, train_copy

    if (out / "warmup.json").is_file():
        return out
    # Every task's words, the corpus's unfamiliar types included: a pre-trained LLM can copy any word it has
    # tokens for, and words the pre-training never shows would otherwise keep their random embeddings.
    first_observations = [next(m.content for m in t.messages if m.role == "user")
                          for name in ("pretrain.jsonl", "corpus.jsonl")
                          for t in read_trajectories(ctx.path("tasks", name))]
    words = task_words(first_observations)
    model, tokenizer = load_policy(PolicySpec(path=str(init)))
    half = ctx.base.copy_warmup_steps // 2
    losses = train_copy(model, tokenizer, words, bare_steps=half, chat_steps=ctx.base.copy_warmup_steps - half,
                        seed=ctx.seed)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "warmup.json").write_text(json.dumps(
            {"steps": len(losses), "words": len(words), "first_loss": losses[0], "last_loss": losses[-1]}) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- probe
def probe_and_route(ctx: PipelineContext) -> dict[str, Any]:
    """Probe the frozen base model on the corpus and route every trajectory (probe.jsonl, partition.json)."""
    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.probe import GradientConcentrationProbe, load_partition
    from prism_lit.sft import SFTModule

    stage = ctx.path("probe")
    router = instantiate(ctx.probe.router)
    if not getattr(router, "needs_scores", True):
        return route_without_probe(ctx, router)
    module = SFTModule(policy=base_policy(ctx))
    data = TrajectoryDataModule(train_files=[str(ctx.path("tasks", "corpus.jsonl"))], batch_size=ctx.probe.batch_size,
                                max_length=ctx.probe.max_length, seed=ctx.seed)
    probe = GradientConcentrationProbe(router=router, output_dir=str(stage), probe_epochs=1)
    trainer = _trainer(ctx, stage, max_epochs=1, callbacks=[probe], enable_checkpointing=False)
    trainer.fit(module, data)
    partition = load_partition(stage / "partition.json")
    return {"router": partition.router, "score": partition.score, "threshold": partition.threshold,
            "n_sft": len(partition.sft_ids), "n_rl": len(partition.rl_ids),
            "n_rl_tasks": len(partition.rl_task_ids)}


def route_without_probe(ctx: PipelineContext, router) -> dict[str, Any]:
    """Route the corpus with a router that reads no score (all-SFT, all-RL, random): no probe pass is run."""
    from prism_lit.data.schema import read_trajectories
    from prism_lit.probe.partition import save_partition
    from prism_lit.probe.records import ProbeRecord

    nan = float("nan")
    records = [ProbeRecord(t.id, t.task_id, t.task_type, [], nan, nan, nan, nan, nan, 0)
               for t in read_trajectories(ctx.path("tasks", "corpus.jsonl"))]
    partition = router.route(sorted(records, key=lambda r: r.id))
    save_partition(ctx.path("probe", "partition.json"), partition)
    return {"router": partition.router, "score": None, "threshold": None, "probed": False,
            "n_sft": len(partition.sft_ids), "n_rl": len(partition.rl_ids), "n_rl_tasks": len(partition.rl_task_ids)}


# ---------------------------------------------------------------------------------------------- SFT
def sft_policy(ctx: PipelineContext) -> PolicySpec:
    """The policy after SFT (the base when SFT was skipped)."""
    marker = ctx.info.get("sft", {}).get("info", {})
    if not marker.get("trained"):
        return base_policy(ctx)
    export = str(ctx.path("sft", "export"))
    if ctx.sft.lora is not None:
        return PolicySpec(path=base_policy(ctx).path, adapter_path=export)
    return PolicySpec(path=export)


def train_sft(ctx: PipelineContext) -> dict[str, Any]:
    from prism_lit.data.datamodule import TrajectoryDataModule
    from prism_lit.probe import load_partition
    from prism_lit.sft import SFTModule

    stage = ctx.path("sft")
    partition_path = ctx.path("probe", "partition.json")
    if not ctx.sft.enabled:
        return {"trained": False, "reason": "sft.enabled is false"}
    if ctx.sft.data == "partition" and not load_partition(partition_path).sft_ids:
        return {"trained": False, "reason": "the router sent no trajectory to SFT"}
    base = base_policy(ctx)
    module = SFTModule(policy=PolicySpec(path=base.path, lora=ctx.sft.lora), lr=ctx.sft.lr,
                       warmup_steps=ctx.sft.warmup_steps, schedule=ctx.sft.schedule, export_dir=str(stage / "export"))
    data = TrajectoryDataModule(
        train_files=[str(ctx.path("tasks", "corpus.jsonl"))], batch_size=ctx.sft.batch_size,
        max_length=ctx.sft.max_length, seed=ctx.seed, context_weight=ctx.sft.context_weight,
        partition_path=str(partition_path) if ctx.sft.data == "partition" else None,
    )
    trainer = _trainer(ctx, stage, max_epochs=ctx.sft.epochs)
    trainer.fit(module, data, ckpt_path=_last_ckpt(stage))
    return {"trained": True, "steps": trainer.global_step, "n_train": len(data._current_train_indices()),
            "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


# ---------------------------------------------------------------------------------------------- RL
def rl_task_ids(ctx: PipelineContext) -> list[str]:
    from prism_lit.data.schema import read_trajectories
    from prism_lit.probe import load_partition

    if ctx.rl.tasks == "all":
        return sorted({t.task_id for t in read_trajectories(ctx.path("tasks", "corpus.jsonl"))})
    return load_partition(ctx.path("probe", "partition.json")).rl_task_ids


def final_policy(ctx: PipelineContext) -> PolicySpec:
    marker = ctx.info.get("rl", {}).get("info", {})
    if not marker.get("trained"):
        return sft_policy(ctx)
    start = sft_policy(ctx)
    export = str(ctx.path("rl", "export"))
    if start.adapter_path is not None or marker.get("adapter"):
        return PolicySpec(path=start.path, adapter_path=export)
    return PolicySpec(path=export)


def train_rl(ctx: PipelineContext) -> dict[str, Any]:
    from prism_lit.rl.tasks import RLTaskDataModule

    stage = ctx.path("rl")
    if not ctx.rl.enabled:
        return {"trained": False, "reason": "rl.enabled is false"}
    tasks = rl_task_ids(ctx)
    if not tasks:
        return {"trained": False, "reason": "no task was routed to RL"}
    start = sft_policy(ctx)
    module = instantiate(
        ctx.rl.module, policy=start, protocol=ctx.env.protocol, env_id=ctx.env_id,
        env_kwargs={**ctx.env.kwargs, "split": ctx.env.train_split}, export_dir=str(stage / "export"),
    )
    data = RLTaskDataModule(env_id=ctx.env_id, env_kwargs={**ctx.env.kwargs, "split": ctx.env.train_split},
                            task_ids=tasks, seed=ctx.seed, **ctx.rl.data)
    # the eval stage measures every policy on fixed panels; no validation loop inside RL training
    iterations = ctx.rl.max_steps or max(1, math.ceil(ctx.rl.epochs * len(tasks) / data.tasks_per_batch))
    trainer = _trainer(ctx, stage, checkpoint_every_n_steps=ctx.rl.checkpoint_every_n_steps, max_steps=iterations,
                       max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, data, ckpt_path=_last_ckpt(stage))
    return {"trained": True, "steps": trainer.global_step, "iterations": iterations, "n_tasks": len(tasks),
            "adapter": start.adapter_path is not None}


# ---------------------------------------------------------------------------------------------- eval
def panel_task_ids(ctx: PipelineContext, split: str, n: int) -> list[str]:
    """The fixed evaluation panel of ``split``: ``n`` of its task ids drawn with a fixed seed, the same for every
    method and seed (the split's own order groups tasks by type, so its first ``n`` would not be a fair panel)."""
    import random

    import gymnasium as gym

    import prism_lit.envs  # noqa: F401

    env = gym.make(ctx.env_id, split=split, **ctx.env.kwargs)
    try:
        ids = sorted(env.unwrapped.task_ids)
    finally:
        env.close()
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


def evaluate(ctx: PipelineContext) -> dict[str, Any]:
    from prism_lit.policy import load_policy
    from prism_lit.rl.evaluation import evaluate_policy

    policies = {"base": base_policy, "sft": sft_policy, "final": final_policy}
    results: dict[str, Any] = {}
    for name in ctx.eval.policies:
        if name not in policies:
            raise ValueError(f"eval.policies: unknown policy {name!r}; choose from {sorted(policies)}")
        model, tokenizer = load_policy(policies[name](ctx))
        model.eval()
        results[name] = {}
        for split, n in ctx.env.eval_splits.items():
            metrics = evaluate_policy(
                model, tokenizer, ctx.env.protocol, ctx.env_id, {**ctx.env.kwargs, "split": split},
                panel_task_ids(ctx, split, n), max_steps=ctx.eval.max_steps, batch_size=ctx.eval.batch_size,
                max_new_tokens=ctx.eval.max_new_tokens,
            )
            results[name][split] = report_metrics(metrics)
    from prism_lit.io import atomic_write_json

    atomic_write_json(ctx.path("eval", "eval.json"), results)
    return {name: {split: {k: v for k, v in m.items() if k in ("success_rate", "score")}
                   for split, m in splits.items()} for name, splits in results.items()}


# ---------------------------------------------------------------------------------------------- report
def write_report(ctx: PipelineContext) -> dict[str, Any]:
    from prism_lit.pipeline.report import build_report

    report = build_report(ctx.run_dir)
    return {"report": str(ctx.path("report.json")), "final": report["eval"].get("final", {})}


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
