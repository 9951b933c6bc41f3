"""Where generated ALFWorld games live: a per-user cache keyed by generator version and seed.

Layout: ``<root>/alfworld/<GENERATOR_VERSION>/seed<seed>/<config key>/<split>/<task dir>/<trial dir>/``, where
``<root>`` is ``$PRISM_LIT_CACHE`` when set, else ``$XDG_CACHE_HOME/prism_lit`` (default ``~/.cache/prism_lit``).
Bump :data:`GENERATOR_VERSION` whenever the generator's output for a given seed changes, so stale games are
never mixed with new ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from prism_lit.envs.cache import CACHE_ENV_VAR, cache_root

__all__ = ["CACHE_ENV_VAR", "GENERATOR_VERSION", "alfworld_data_dir", "cache_root", "games_dir"]

GENERATOR_VERSION = "v1"


def games_dir(seed: int, config_key: str, root: str | os.PathLike | None = None) -> Path:
    """Directory of the games generated with ``seed`` and the size configuration ``config_key``."""
    base = Path(root).expanduser() if root is not None else cache_root()
    return base / "alfworld" / GENERATOR_VERSION / f"seed{int(seed)}" / config_key


def alfworld_data_dir(root: str | os.PathLike | None = None) -> Path:
    """The directory handed to alfworld as ``ALFWORLD_DATA`` (alfworld creates it on import)."""
    base = Path(root).expanduser() if root is not None else cache_root()
    return base / "alfworld" / "alfworld_data"
