"""RL data: the "dataset" is a list of task ids; a batch is a few tasks, each played G times by the module.

:class:`TaskStream` is the training iterable. Each epoch it shuffles the task list with ``seed + epoch`` (the
same permutation on every rank), cuts it into global batches and gives rank ``r`` every ``world``-th task of
each global batch: every task is played exactly once per epoch across ranks, every rank gets the same number of
non-empty batches. It has ``__len__`` (so Lightning does not prefetch) and ``state_dict``/``load_state_dict``
(so Lightning stores the position in the checkpoint and a resumed run continues with the next batch).

Each batch carries one env seed per task, derived from (seed, epoch, task id), so the G episodes of a group share
their seed and a rerun sees the same seeds.

Evaluation panels are fixed lists of (task id, seed), the same every validation, sharded across ranks.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl

from prism_lit.rl.rollout import env_task_ids, make_env


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from the parts' text (the same in every process; Python's ``hash`` is salted)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def shard_batches(order: Sequence[str], batch_size: int, rank: int, world: int) -> list[list[str]]:
    """Rank ``rank``'s batches of one epoch (see the module docstring); every rank gets the same count."""
    n = len(order)
    if n < world:
        raise ValueError(f"RL tasks: {n} task(s) cannot feed {world} ranks; give at least one task per rank")
    per_global = batch_size * world
    chunks = -(-n // per_global)
    if n // chunks < world:  # a tail chunk too small for every rank: use fewer, slightly larger chunks
        chunks = n // world
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    return [list(order[bounds[c]:bounds[c + 1]])[rank::world] for c in range(chunks)]


class TaskStream:
    """Shuffled, sharded, resumable batches of task ids (see the module docstring)."""

    def __init__(self, task_ids: Sequence[str], batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"tasks_per_batch must be >= 1, got {batch_size}")
        self.task_ids = list(task_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.index = 0  # batches of this epoch already handed out
        self._len = len(shard_batches(self.task_ids, batch_size, rank, world_size))

    def __len__(self) -> int:
        return self._len

    def epoch_batches(self, epoch: int) -> list[list[str]]:
        order = list(self.task_ids)
        if self.shuffle:
            random.Random(stable_seed(self.seed, epoch)).shuffle(order)
        return shard_batches(order, self.batch_size, self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.index >= self._len:  # the previous epoch was used up
            self.epoch += 1
            self.index = 0
        epoch = self.epoch
        batches = self.epoch_batches(epoch)
        while self.index < len(batches):
            k = self.index
            self.index += 1
            tasks = batches[k]
            yield {"task_ids": tasks, "seeds": [stable_seed(self.seed, epoch, t) for t in tasks],
                   "epoch": epoch, "index": k}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "num_tasks": len(self.task_ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_tasks") not in (None, len(self.task_ids)):
            raise ValueError(
                f"resume: the checkpoint's task stream had {state['num_tasks']} tasks, this run has "
                f"{len(self.task_ids)}; resume with the same task list (partition, env split) or start afresh"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


@dataclass
class EvalPanel:
    """A fixed evaluation panel: the same tasks and env seeds every time.

    Args:
        name: metric prefix, e.g. ``valid_seen``.
        env_kwargs: overrides of the data module's ``env_kwargs`` (e.g. ``{"split": "valid_seen"}``).
        task_ids: the tasks; ``None`` = the env's own task list for these kwargs.
        num_tasks: keep this many, drawn once with ``seed`` from the sorted list (``None`` = all).
        seed: picks the tasks and the env seeds (seed of task i is derived from (seed, task id)).
    """

    name: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    task_ids: list[str] | None = None
    num_tasks: int | None = None
    seed: int = 1234


def panel_tasks(panel: EvalPanel, env_id: str, base_kwargs: dict[str, Any]) -> list[tuple[str, int]]:
    """The panel's ``(task_id, seed)`` list (deterministic)."""
    ids = list(panel.task_ids) if panel.task_ids is not None else None
    if ids is None:
        env = make_env(env_id, {**base_kwargs, **panel.env_kwargs})
        try:
            ids = sorted(env_task_ids(env))
        finally:
            env.close()
    if panel.num_tasks is not None and panel.num_tasks < len(ids):
        keep = sorted(random.Random(stable_seed(panel.seed, "panel")).sample(range(len(ids)), panel.num_tasks))
        ids = [ids[i] for i in keep]
    return [(t, stable_seed(panel.seed, t)) for t in ids]


class _PanelBatches:
    """Validation/test iterable: this rank's batches of every panel, as dicts the module understands."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class RLTaskDataModule(pl.LightningDataModule):
    """Task ids for RL training, and fixed evaluation panels.

    Args:
        env_id: gymnasium id of the env (e.g. ``prism_lit/ALFWorld-v0``).
        env_kwargs: kwargs for ``gymnasium.make`` (e.g. the split).
        task_ids: explicit training tasks; ``None`` = the env's ``task_ids`` for ``env_kwargs``.
        partition_path: a probe ``partition.json``; when given, training tasks are its ``which`` tasks.
        which: ``rl`` (the router's RL share), ``sft`` or ``all`` tasks of the partition.
        tasks_per_batch: tasks per training batch per rank (each played ``group_size`` times by the module).
        seed: task order and env seeds.
        shuffle: reshuffle the tasks every epoch.
        eval_panels: validation/test panels; default: one panel ``train`` of up to 32 training tasks.
        eval_batch_size: episodes per evaluation batch.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        task_ids: list[str] | None = None,
        partition_path: str | None = None,
        which: Literal["rl", "sft", "all"] = "rl",
        tasks_per_batch: int = 16,
        seed: int = 0,
        shuffle: bool = True,
        eval_panels: list[EvalPanel] | None = None,
        eval_batch_size: int = 16,
    ) -> None:
        super().__init__()
        if which not in ("rl", "sft", "all"):
            raise ValueError(f"RLTaskDataModule.which must be 'rl', 'sft' or 'all', got {which!r}")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.explicit_task_ids = list(task_ids) if task_ids is not None else None
        self.partition_path = partition_path
        self.which = which
        self.tasks_per_batch = tasks_per_batch
        self.seed = seed
        self.shuffle = shuffle
        self.eval_panels = [p if isinstance(p, EvalPanel) else EvalPanel(**p) for p in (eval_panels or [])]
        self.eval_batch_size = eval_batch_size
        self.train_task_ids: list[str] | None = None
        self._stream: TaskStream | None = None

    # ------------------------------------------------------------------ task lists
    def resolve_train_tasks(self) -> list[str]:
        """Training task ids: explicit list, else the env's; restricted to the partition's ``which`` tasks."""
        if self.train_task_ids is not None:
            return self.train_task_ids
        if self.partition_path is not None:
            from prism_lit.probe.partition import load_partition

            partition = load_partition(self.partition_path)
            chosen = {"rl": partition.rl_task_ids, "sft": partition.sft_task_ids,
                      "all": sorted(set(partition.rl_task_ids) | set(partition.sft_task_ids))}[self.which]
            if self.explicit_task_ids is not None:
                allowed = set(self.explicit_task_ids)
                chosen = [t for t in chosen if t in allowed]
            tasks = list(chosen)
            if not tasks:
                raise ValueError(f"{self.partition_path}: field {self.which}_ids: the partition routes no task to "
                                 f"'{self.which}'; nothing to train on")
        elif self.explicit_task_ids is not None:
            tasks = sorted(set(self.explicit_task_ids))
        else:
            env = make_env(self.env_id, self.env_kwargs)
            try:
                tasks = sorted(env_task_ids(env))
            finally:
                env.close()
        if not tasks:
            raise ValueError(f"RLTaskDataModule: no training tasks for env {self.env_id!r} with {self.env_kwargs}")
        self.train_task_ids = tasks
        return tasks

    def panels(self) -> list[EvalPanel]:
        if self.eval_panels:
            return self.eval_panels
        return [EvalPanel(name="train", task_ids=self.resolve_train_tasks(), num_tasks=32, seed=self.seed)]

    @property
    def eval_panel_names(self) -> list[str]:
        return [p.name for p in self.panels()]

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> TaskStream:
        rank, world = self._rank_world()
        stream = TaskStream(self.resolve_train_tasks(), self.tasks_per_batch, seed=self.seed, shuffle=self.shuffle,
                            rank=rank, world_size=world)
        if self._stream is not None:  # keep the position when Lightning asks again (reload_dataloaders_every_n)
            stream.epoch, stream.index = self._stream.epoch, self._stream.index
        self._stream = stream
        return stream

    def _panel_loader(self) -> _PanelBatches:
        rank, world = self._rank_world()
        batches = []
        for panel in self.panels():
            rows = panel_tasks(panel, self.env_id, self.env_kwargs)[rank::world]
            kwargs = {**self.env_kwargs, **panel.env_kwargs}
            for lo in range(0, len(rows), self.eval_batch_size):
                chunk = rows[lo:lo + self.eval_batch_size]
                batches.append({"panel": panel.name, "env_kwargs": kwargs, "task_ids": [t for t, _ in chunk],
                                "seeds": [s for _, s in chunk]})
        return _PanelBatches(batches)

    def val_dataloader(self) -> _PanelBatches:
        return self._panel_loader()

    def test_dataloader(self) -> _PanelBatches:
        return self._panel_loader()
