"""Length-bucketed batches and padding.

Random batches of 200–2000-token samples spend ~1.6× the real tokens on padding (DESIGN.md §6). Here a
shuffled pool of ``bucket_factor × batch_size`` samples is sorted by length and cut into batches, and the batch
order is shuffled again, so each batch holds samples of similar length while every epoch still sees the data
in a new order. Batches are the dataset's *items*: Lightning's DistributedSampler then hands whole batches to
ranks, so bucketing and DDP sharding compose without a custom distributed sampler.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from prism_lit.data.tokenize import IGNORE_INDEX


def bucketed_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    max_tokens: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    bucket_factor: int = 50,
) -> list[list[int]]:
    """Index batches of similar length. ``max_tokens`` caps ``batch_len × longest`` (a padded-token budget)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    pool_size = max(batch_size * bucket_factor, batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda i: lengths[i])
        current: list[int] = []
        for index in pool:
            candidate = current + [index]
            longest = max(lengths[i] for i in candidate)
            too_big = max_tokens is not None and current and longest * len(candidate) > max_tokens
            if len(candidate) > batch_size or too_big:
                batches.append(current)
                current = [index]
            else:
                current = candidate
        if current:
            batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def bucketed_groups(
    groups: Sequence[Sequence[int]],
    lengths: Sequence[int],
    batch_size: int,
    *,
    max_tokens: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
) -> list[list[int]]:
    """Batches of whole groups (all rows of one trajectory together), similar lengths side by side.

    A batch takes groups while it has at most ``batch_size`` rows and ``rows × longest <= max_tokens``; a group
    larger than that is a batch of its own (the probe needs every row of a trajectory in one batch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    longest = [max(lengths[i] for i in g) for g in groups]
    order = list(range(len(groups)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda k: longest[k])
    batches: list[list[int]] = []
    current: list[int] = []
    current_longest = 0
    for k in order:
        rows = len(current) + len(groups[k])
        width = max(current_longest, longest[k])
        if current and (rows > batch_size or (max_tokens is not None and rows * width > max_tokens)):
            batches.append(current)
            current, width = [], longest[k]
        current = current + list(groups[k])
        current_longest = width
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def padding_overhead(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded tokens / real tokens (1.0 = no padding)."""
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return padded / real if real else 1.0


def collate(samples: Sequence[dict[str, Any]], pad_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad ``input_ids``/``labels`` (and per-token ``weights`` as ``loss_weights``) into tensors; metadata (id,
    task_id, task_type) stays as lists."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, cols] = torch.tensor(s["input_ids"])
        labels[row, cols] = torch.tensor(s["labels"])
        mask[row, cols] = 1
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if any("weights" in s for s in samples):
        weights = torch.zeros((len(samples), width), dtype=torch.float32)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
            weights[row, cols] = torch.tensor(s.get("weights", [1.0] * n), dtype=torch.float32)
        batch["loss_weights"] = weights
    for key in ("id", "task_id", "task_type"):
        batch[key] = [s[key] for s in samples]
    return batch


class BatchDataset(Dataset):
    """A dataset whose items are ready, padded batches (use ``DataLoader(batch_size=None)``)."""

    def __init__(self, rows, batches: list[list[int]], pad_id: int):
        self.rows, self.batches, self.pad_id = rows, batches, pad_id

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return collate([self.rows[i] for i in self.batches[index]], self.pad_id)
