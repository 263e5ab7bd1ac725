"""The per-user cache folder of imgclass (no Theano import, so that the
store can use it too)."""

from __future__ import annotations

import os


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/imgclass``, default ``~/.cache/imgclass``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(root, "imgclass")
