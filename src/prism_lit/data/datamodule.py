"""TrajectoryDataModule: expert trajectories → tokenised, length-bucketed batches (backed by 🤗 datasets).

When ``partition_path`` names a partition written by the PRISM probe, the training set is re-partitioned to
the trajectories routed to SFT as soon as that file exists. Use ``reload_dataloaders_every_n_epochs: 1`` so the
epoch after the probe epoch is served D_SFT; the probe writes the file on rank 0 and barriers, so every rank sees it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from prism_lit.data.batching import BatchDataset, bucketed_batches, bucketed_groups, padding_overhead
from prism_lit.data.formats import FORMATS, load_trajectories
from prism_lit.data.schema import Trajectory, TrajectoryFormatError
from prism_lit.data.tokenize import (
    TRUNCATION_POLICIES,
    SampleTooLongError,
    Truncation,
    tokenize_trajectory_samples,
)
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class ExpertDataSpec:
    """Generate expert trajectories with the env's oracle when the training file does not exist yet.

    Args:
        env: gymnasium id, e.g. ``prism_lit/WebShop-v0``.
        n_tasks: number of expert episodes.
        split: task split the episodes come from.
        seed: generation seed.
        env_kwargs: keyword arguments for ``gymnasium.make``.
        protocol: the prompt/action protocol; use the same one in the RL stage.
    """

    env: str
    n_tasks: int = 100
    split: str = "train"
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    protocol: AgentProtocol = field(default_factory=AgentProtocol)


def _line_of(path: str, trajectory_id: str) -> int | None:
    import json

    with open(path, encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and str(obj.get("id", obj.get("item_id"))) == trajectory_id:
                return number
    return None


def _some(ids: list[str], n: int = 10) -> str:
    """``'a', 'b', 'c' and 7 more``: a few ids for a message."""
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


class TrajectoryDataModule(L.LightningDataModule):
    """Serves SFT batches of multi-turn agent trajectories.

    Args:
        train_files: trajectory files (prism JSONL, ETO or AgentGym; see docs/data.md).
        val_files: validation files; empty = no validation loop (unless ``val_fraction``).
        format: ``auto``, ``prism``, ``eto`` or ``agentgym``.
        env: env name recorded for ETO/AgentGym records that do not carry one.
        max_length: token limit per sample; see ``truncation``.
        truncation: ``right``, ``left``, ``skip`` or ``fail`` (docs/data.md).
        context_weight: loss weight of the non-assistant tokens (0: SFT on the assistant turns only; > 0: language
            modelling on the whole interaction text as well, at that weight).
        batch_size: samples per batch.
        max_tokens: optional cap on padded tokens per batch (longest × count).
        bucket: length-bucketed batches (``False``: plain shuffled batches).
        val_fraction: share of the training trajectories held out for validation when ``val_files`` is empty.
        seed: shuffling seed (the epoch is added, so every epoch differs and every run repeats).
        partition_path: PRISM partition; once the file exists only its SFT trajectories are trained on.
        tokenizer_path: tokenizer directory; default: the LightningModule's ``tokenizer``.
        expert_data: generate ``train_files[0]`` with the env's oracle if it is missing.
        num_workers: DataLoader workers.
        protocol: the agent protocol of the RL stage; each assistant turn is then trained in exactly its rollout
            prompt (``protocol.prompt_messages``: its history bound, ``system_in_user``; and ``train_thinking``),
            which may take several sequences per trajectory (rows sharing its ``id``, numbered by ``part``).
            ``None``: the whole recorded history.
    """

    def __init__(
        self,
        train_files: list[str],
        val_files: list[str] | None = None,
        format: str = "auto",
        env: str = "unknown",
        max_length: int = 1024,
        truncation: Truncation = "right",
        context_weight: float = 0.0,
        batch_size: int = 8,
        max_tokens: int | None = None,
        bucket: bool = True,
        val_fraction: float = 0.0,
        seed: int = 0,
        partition_path: str | None = None,
        tokenizer_path: str | None = None,
        expert_data: ExpertDataSpec | None = None,
        num_workers: int = 0,
        protocol: AgentProtocol | None = None,
    ) -> None:
        super().__init__()
        if not train_files:
            raise ConfigError("data.train_files: give at least one trajectory file")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if format not in FORMATS:
            raise ConfigError(f"data.format: unknown trajectory format {format!r}; choose one of {', '.join(FORMATS)}")
        if truncation not in TRUNCATION_POLICIES:
            raise ConfigError(f"data.truncation: unknown policy {truncation!r}; choose one of "
                              f"{', '.join(TRUNCATION_POLICIES)}")
        for name, value, low in (("batch_size", batch_size, 1), ("max_length", max_length, 2),
                                 ("max_tokens", max_tokens, 1), ("num_workers", num_workers, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"data.{name} must be an integer >= {low}, got {value!r}")
        self.train_files, self.val_files = list(train_files), list(val_files or [])
        self.format, self.env = format, env
        self.max_length, self.truncation = max_length, truncation
        if not 0.0 <= context_weight <= 1.0:
            raise ConfigError(f"data.context_weight must be in [0, 1], got {context_weight!r}")
        self.context_weight = context_weight
        self.batch_size, self.max_tokens, self.bucket = batch_size, max_tokens, bucket
        self.val_fraction, self.seed = val_fraction, seed
        self.partition_path, self.tokenizer_path = partition_path, tokenizer_path
        self.expert_data, self.num_workers = expert_data, num_workers
        self.protocol = protocol
        self.tokenizer = None
        self.train_rows = None
        self.val_rows = None
        self.stats: dict[str, int] = {}
        self._file_of: dict[str, str] = {}  # id -> the training file it was read from (every id read)
        self._truncated: list[str] = []
        self._skipped: list[str] = []
        self._longest = 0
        self._parsed: dict[str, list[Trajectory]] = {}
        self._check_files()

    def _check_files(self) -> None:
        """Read every file that exists now (and the partition's ids), so bad data fails before a Trainer, a logger
        or a model exists; ``setup`` reuses what was read. Missing files are checked in ``prepare_data`` (the first
        training file may be generated there)."""
        for path in self.train_files + self.val_files:
            if path not in self._parsed and os.path.isfile(path):
                self._parsed[path] = load_trajectories(path, self.format, self.env)
                if path in self.train_files:
                    self._record_ids(path, self._parsed[path])
        if (self.partition_path and os.path.isfile(self.partition_path)
                and all(p in self._parsed for p in self.train_files)):
            from prism_lit.probe.partition import load_partition

            self._check_partition(load_partition(self.partition_path).sft_ids, None)

    # ------------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        target = Path(self.train_files[0])
        if self.expert_data is not None and not target.exists():
            from prism_lit.envs.experts import write_expert_dataset

            spec = self.expert_data
            stats = write_expert_dataset(
                spec.env, spec.n_tasks, target, spec.protocol, split=spec.split, seed=spec.seed,
                env_kwargs=spec.env_kwargs,
            )
            log.info("wrote %d expert trajectories to %s (%s)", spec.n_tasks, target, stats)
        for path in self.train_files + self.val_files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"data: trajectory file not found: {path}")
        self._check_files()
        if self.train_rows is None and (self.tokenizer_path is not None or self.trainer is not None):
            # tokenise here, before the Trainer's setup creates log directories: a trajectory over max_length with
            # truncation: fail (or a corpus with nothing trainable) stops the run before anything is written.
            # Only this rank runs prepare_data; it keeps the rows, the other ranks tokenise in setup.
            self._build_rows()

    def _get_tokenizer(self):
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_path is not None:
            from prism_lit.policy import PolicySpec, load_tokenizer

            # as the policy loads it: a pad token (Llama-3 has none), the template checked, its settings kept
            self.tokenizer = load_tokenizer(PolicySpec(path=self.tokenizer_path))
        elif self.trainer is not None and getattr(self.trainer.lightning_module, "tokenizer", None) is not None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
        else:
            raise ValueError("data.tokenizer_path is not set and the LightningModule has no `tokenizer`")
        return self.tokenizer

    def _tokenize_files(self, paths: list[str], record: bool = False) -> list[dict[str, Any]]:
        tokenizer = self._get_tokenizer()
        rows: list[dict[str, Any]] = []
        for path in paths:
            trajectories = self._parsed.pop(path, None) or load_trajectories(path, self.format, self.env)
            if record:
                self._record_ids(path, trajectories)
            for t in trajectories:
                try:
                    samples = tokenize_trajectory_samples(t, tokenizer, self.max_length, self.truncation,
                                                          self.context_weight, self.protocol)
                except SampleTooLongError as err:
                    raise TrajectoryFormatError(path, _line_of(path, t.id), "messages", str(err)) from None
                if not samples:
                    self.stats["skipped"] = self.stats.get("skipped", 0) + 1
                    self._skipped.append(t.id)
                    continue
                for part, sample in enumerate(samples):
                    self.stats["truncated"] = self.stats.get("truncated", 0) + int(sample.truncated)
                    rows.append(
                        {"id": t.id, "task_id": t.task_id, "task_type": t.task_type, "part": part,
                         "input_ids": sample.input_ids, "labels": sample.labels, "length": len(sample.input_ids),
                         **({"weights": sample.weights} if sample.weights is not None else {})}
                    )
                cut = [s.full_length for s in samples if s.truncated]
                if cut:
                    self._truncated.append(t.id)
                    self._longest = max(self._longest, *cut)
            self.stats["read"] = self.stats.get("read", 0) + len(trajectories)
        return rows

    def _record_ids(self, path: str, trajectories: list[Trajectory]) -> None:
        """Remember which file each training id came from; an id in two files is an error naming both lines."""
        for t in trajectories:
            other = self._file_of.get(t.id)
            if other is not None and other != path:  # within one file the reader names both lines
                raise TrajectoryFormatError(
                    path, _line_of(path, t.id), "id",
                    f"duplicate id {t.id!r}, also in {other} line {_line_of(other, t.id)}; ids must be unique "
                    "across data.train_files (the partition names trajectories by id)")
            self._file_of[t.id] = path

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is None:
            self._build_rows()

    def _build_rows(self) -> None:
        import datasets

        self.stats = {"read": 0, "skipped": 0, "truncated": 0}
        self._file_of, self._truncated, self._skipped, self._longest = {}, [], [], 0
        train = self._tokenize_files(self.train_files, record=True)
        val = self._tokenize_files(self.val_files) if self.val_files else []
        if not val and self.val_fraction > 0:
            import random

            ids = sorted({r["id"] for r in train})  # whole trajectories (all their parts) go to one side
            random.Random(self.seed).shuffle(ids)
            held = set(ids[: max(1, int(len(ids) * self.val_fraction))])
            val = [r for r in train if r["id"] in held]
            train = [r for r in train if r["id"] not in held]
        if not train:
            raise DataError(
                f"data: no trainable trajectory left in {self.train_files} (read {self.stats['read']}, skipped "
                f"{self.stats['skipped']} as too long or with nothing to train, {len(val)} held out for validation)",
                hint="Raise data.max_length, set data.truncation: right, or lower data.val_fraction.")
        self.train_rows = datasets.Dataset.from_list(train)
        self.val_rows = datasets.Dataset.from_list(val) if val else None
        kept = len({r["id"] for r in train} | {r["id"] for r in val})
        message = (
            f"data: read {self.stats['read']} trajectories, kept {kept}, "
            f"skipped {self.stats['skipped']} (too long or nothing trainable), truncated {self.stats['truncated']}"
        )
        if len(train) + len(val) > kept:
            # each turn trained in its own rollout prompt (Qwen3's template, a binding history bound): docs/data.md
            message += (f"; {len(train) + len(val)} sequences (several per trajectory, kept in one batch; the "
                        "probe measures them as one sample)")
        (log.warning if self.stats["skipped"] else log.info)(message)
        if self._skipped:
            log.warning("data: skipped %d trajectories (over max_length=%d with truncation=%s, or no trained token "
                        "left): %s", len(self._skipped), self.max_length, self.truncation, _some(self._skipped))
        if self._truncated:
            cut = "final turns" if self.truncation == "right" else "first turns"
            log.warning(
                "data: truncated %d of %d trajectories to max_length=%d tokens (truncation=%s: their %s are not "
                "trained; the longest has %d tokens): %s. Raise max_length above %d to train them whole, or set "
                "truncation: skip (leave them out) or fail (stop).",
                len(self._truncated), self.stats["read"], self.max_length, self.truncation, cut, self._longest,
                _some(self._truncated), self._longest)

    @property
    def token_stats(self) -> dict[str, Any]:
        """What tokenising did to the training files (after ``setup``): trajectories read, skipped and truncated
        at ``max_length``, and the full length of the longest truncated one; stages record it."""
        stats = {**self.stats, "max_length": self.max_length, "truncation": self.truncation}
        if self._truncated:
            stats["longest_truncated_tokens"] = self._longest
        return stats

    # ------------------------------------------------------------------ loaders
    def _current_train_indices(self) -> list[int]:
        assert self.train_rows is not None
        if self.partition_path and os.path.isfile(self.partition_path):
            from prism_lit.probe.partition import load_partition

            wanted = load_partition(self.partition_path).sft_ids
            keep = set(wanted)
            ids = self.train_rows["id"]
            indices = [i for i, tid in enumerate(ids) if tid in keep]
            self._check_partition(wanted, {ids[i] for i in indices})
            return indices
        return list(range(len(self.train_rows)))

    def _check_partition(self, wanted: list[str], trained: set[str] | None) -> None:
        """A partition of another corpus would silently train on a subset (or nothing): refuse it, naming ids."""
        files = ", ".join(self.train_files)
        missing = [i for i in wanted if i not in self._file_of]
        if missing:
            raise DataError(
                f"data.partition_path: {self.partition_path}: {len(missing)} of its {len(wanted)} sft_ids are not in "
                f"the training files ({files}): {_some(missing, 5)}. The partition was made from another corpus.",
                hint="Re-run the probe on these files (pipeline: --rerun '[probe]'), or point partition_path at "
                     "the partition of this corpus.")
        if trained is None:  # ids only (before tokenising)
            return
        if not trained:
            reason = ("the router sent no trajectory to SFT" if not wanted else
                      f"all {len(wanted)} of its sft_ids were skipped (too long) or held out for validation")
            raise DataError(f"data.partition_path: {self.partition_path}: nothing to train: {reason}.",
                            hint="Route some trajectories to SFT (the router's rl_fraction), or raise "
                                 "data.max_length / lower data.val_fraction.")
        if len(trained) < len(wanted):
            log.warning("data: %d of the partition's %d SFT trajectories are not trained (skipped as too long or "
                        "held out for validation)", len(wanted) - len(trained), len(wanted))

    def _loader(self, rows, indices: list[int], shuffle: bool, seed: int) -> DataLoader:
        lengths_all = rows["length"]
        lengths = [lengths_all[i] for i in indices]
        parts = rows["part"] if "part" in rows.column_names else None
        if parts is not None and any(parts[i] for i in indices):
            # a trajectory tokenised as several sequences: its rows stay in one batch (the probe measures the
            # trajectory as one sample; SFT sees the same batches)
            by_id: dict[str, list[int]] = {}
            ids_all = rows["id"]
            for local, i in enumerate(indices):
                by_id.setdefault(ids_all[i], []).append(local)
            local = bucketed_groups(list(by_id.values()), lengths, self.batch_size, max_tokens=self.max_tokens,
                                    seed=seed, shuffle=shuffle)
        elif self.bucket:
            local = bucketed_batches(lengths, self.batch_size, max_tokens=self.max_tokens, seed=seed, shuffle=shuffle)
        else:
            import random

            order = list(range(len(indices)))
            if shuffle:
                random.Random(seed).shuffle(order)
            local = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = [[indices[i] for i in b] for b in local]
        self.stats["padding_overhead_x1000"] = int(1000 * padding_overhead(lengths_all, batches)) if batches else 1000
        pad_id = self._get_tokenizer().pad_token_id
        return DataLoader(
            BatchDataset(rows, batches, pad_id), batch_size=None, shuffle=False, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        indices = self._current_train_indices()
        return self._loader(self.train_rows, indices, shuffle=True, seed=self.seed + epoch)

    def val_dataloader(self):
        if self.val_rows is None:
            return []
        return self._loader(self.val_rows, list(range(len(self.val_rows))), shuffle=False, seed=self.seed)
