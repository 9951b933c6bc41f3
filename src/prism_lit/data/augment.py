"""Renaming a trajectory's target object: pre-training episodes whose object must be read, not recalled.

A model pre-trained on episodes about a fixed set of object kinds learns to write one of those kinds after
"take"; given a task about a kind it never saw, it writes a kind it knows. Renaming the target object of some
pre-training episodes to a made-up word, consistently in every message (task, observations, actions), makes the
object something the episode states rather than something the model remembers. ``base.pretrain_rename_fraction``
in the pipeline (docs/policy.md).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import replace

from prism_lit.data.schema import Message, Trajectory

__all__ = ["nonce_word", "rename_objects", "rename_word"]


def nonce_word(rng: random.Random, min_len: int = 2, max_len: int = 9) -> str:
    """A made-up lower-case word of ``min_len``-``max_len`` letters."""
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len)))


def rename_word(trajectory: Trajectory, word: str, new: str) -> Trajectory:
    """``trajectory`` with every whole-word, case-insensitive occurrence of ``word`` replaced by ``new``."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return replace(trajectory, messages=[Message(m.role, pattern.sub(new, m.content), m.loss)
                                         for m in trajectory.messages],
                   meta={**trajectory.meta, "renamed": {word: new}})


def rename_objects(trajectories: list[Trajectory], object_words: Callable[[str], list[str]], fraction: float,
                   seed: int) -> list[Trajectory]:
    """A ``fraction`` of ``trajectories`` (drawn with ``seed``) with each word of ``object_words(task_id)`` renamed
    to a made-up word of 3-8 letters that does not occur in that trajectory; the rest unchanged, order kept."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rename fraction must be in [0, 1], got {fraction!r}")
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(trajectories)), round(fraction * len(trajectories))))
    out = []
    for i, trajectory in enumerate(trajectories):
        if i in chosen:
            text = " ".join(m.content.lower() for m in trajectory.messages)
            for word in object_words(trajectory.task_id):
                new = nonce_word(rng, 3, 8)
                while re.search(rf"\b{new}\b", text):
                    new = nonce_word(rng, 3, 8)
                trajectory = rename_word(trajectory, word, new)
        out.append(trajectory)
    return out
