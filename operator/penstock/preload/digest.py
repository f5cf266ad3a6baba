"""SHA-256 digests: validating the expected value and hashing files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from penstock.preload.errors import PreloadError

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


def normalize_sha256(value: str | None, *, field: str = "sha256") -> str | None:
    """Return ``value`` as 64 lower-case hex digits, or ``None`` when no digest is given.

    Surrounding whitespace and an optional ``sha256:`` prefix (as in OCI digests) are
    accepted; anything else that is not exactly 64 hexadecimal digits is rejected with a
    :class:`PreloadError` naming ``field``.
    """
    if value is None:
        return None
    text = value.strip()
    if text.lower().startswith("sha256:"):
        text = text[len("sha256:") :]
    text = text.lower()
    if not _HEX64.fullmatch(text):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise PreloadError(
            f"{field} {shown!r} is not a SHA-256 digest: expected exactly 64 hexadecimal"
            f" digits (optionally prefixed by 'sha256:'), got {len(text)} characters"
        )
    return text


def sha256_file(path: Path) -> str:
    """Hex SHA-256 digest of the file at ``path``."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
