"""Model preloading: the ``penstock preload`` init container.

Fetches a model artifact (``file://``, ``http(s)://``, ``s3://``) into a directory on a
volume shared with the stage container, verifies its SHA-256, unpacks tar archives safely,
installs atomically, and skips all of it when the same model is already in place.

Public API: :class:`PreloadError`, :func:`preload`, and :func:`main` (the command line).
"""

from __future__ import annotations

from penstock.preload.command import main
from penstock.preload.errors import PreloadError
from penstock.preload.install import preload

__all__ = ["PreloadError", "main", "preload"]
