"""genbench's cache directory: reference statistics, the machine's measured peak and the
compiled-kernel cache live under it."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BENCH_CACHE_DIR"
"""Environment variable naming genbench's cache directory."""


def cache_root() -> Path:
    """``$BENCH_CACHE_DIR``, else ``~/.cache/genbench``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genbench"
