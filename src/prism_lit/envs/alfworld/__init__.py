"""ALFWorld on the real engine (alfworld 0.4.2 + TextWorld), with a procedural game generator.

Public API (imported lazily, so ``import prism_lit.envs.alfworld`` works without the alfworld extra):

- :class:`ALFWorldEnv` (``gymnasium.make("prism_lit/ALFWorld-v0", split=..., ...)``)
- :func:`generate_games` (build ALFWorld games into a json_2.1.1-style tree / the user cache)
- :class:`ALFWorldExpert` (planner oracle for expert trajectories)
- :data:`TASK_TYPES`, :data:`SPLITS`, :data:`GENERATOR_VERSION`
"""

from __future__ import annotations

from typing import Any

from prism_lit.envs.alfworld.cache import GENERATOR_VERSION
from prism_lit.envs.alfworld.layouts import TASK_TYPES
from prism_lit.envs.spec import EnvSpec, register_env

# valid_unseen: held-out rooms whose targets are object kinds no other split has (a test of new words);
# valid_unseen_rooms: the same held-out rooms with known object kinds (ALFWorld's own valid_unseen: unseen rooms)
SPLITS = ("train", "valid_seen", "valid_unseen", "valid_unseen_rooms")

SPEC = register_env(EnvSpec(
    name="alfworld", gym_id="prism_lit/ALFWorld-v0", entry_point="prism_lit.envs.alfworld.env:ALFWorldEnv",
    max_episode_steps=50, expert="prism_lit.envs.alfworld.expert:ALFWorldExpert", task_types=tuple(TASK_TYPES),
    splits=SPLITS, score="1 when the goal is reached, else 0 (won = score 1)",
    object_words="prism_lit.envs.alfworld.games:object_words",
))

_LAZY = {
    "ALFWorldEnv": "prism_lit.envs.alfworld.env",
    "generate_games": "prism_lit.envs.alfworld.generator",
    "ALFWorldExpert": "prism_lit.envs.alfworld.expert",
    "find_games": "prism_lit.envs.alfworld.games",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prism_lit.envs.alfworld' has no attribute {name!r}")


__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "TASK_TYPES",
    "ALFWorldEnv",
    "ALFWorldExpert",
    "find_games",
    "generate_games",
]
