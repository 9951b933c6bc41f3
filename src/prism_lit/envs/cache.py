"""The per-user cache of environment assets (generated ALFWorld games, WebShop search indexes).

``$PRISM_LIT_CACHE`` when set, else ``$XDG_CACHE_HOME/prism_lit`` (default ``~/.cache/prism_lit``).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "PRISM_LIT_CACHE"


def cache_root() -> Path:
    """The prism_lit cache directory (``$PRISM_LIT_CACHE`` or ``~/.cache/prism_lit``)."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "prism_lit"
