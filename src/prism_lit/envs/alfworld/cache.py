"""Where generated ALFWorld games live: a per-user cache keyed by generator version and seed.

Layout: ``<root>/alfworld/<GENERATOR_VERSION>/seed<seed>/<config key>/<split>/<task dir>/<trial dir>/``, where
``<root>`` is ``$PRISM_LIT_CACHE`` when set, else ``$XDG_CACHE_HOME/prism_lit`` (default ``~/.cache/prism_lit``).
Bump :data:`GENERATOR_VERSION` whenever the generator's output for a given seed changes, so stale games are
never mixed with new ones.
"""

from __future__ import annotations

import os
from pathlib import Path

GENERATOR_VERSION = "v1"
CACHE_ENV_VAR = "PRISM_LIT_CACHE"


def cache_root() -> Path:
    """The prism_lit cache directory (``$PRISM_LIT_CACHE`` or ``~/.cache/prism_lit``)."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "prism_lit"


def games_dir(seed: int, config_key: str, root: str | os.PathLike | None = None) -> Path:
    """Directory of the games generated with ``seed`` and the size configuration ``config_key``."""
    base = Path(root).expanduser() if root is not None else cache_root()
    return base / "alfworld" / GENERATOR_VERSION / f"seed{int(seed)}" / config_key


def alfworld_data_dir(root: str | os.PathLike | None = None) -> Path:
    """The directory handed to alfworld as ``ALFWORLD_DATA`` (alfworld creates it on import)."""
    base = Path(root).expanduser() if root is not None else cache_root()
    return base / "alfworld" / "alfworld_data"
