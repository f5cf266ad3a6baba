"""An exclusive lock on the destination directory, so that two pods preloading into the
same shared volume do not fetch over each other."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from penstock.preload.errors import PreloadError

log = logging.getLogger("penstock.preload")

_POLL_SECONDS = 0.2


@contextmanager
def dest_lock(dest: Path, deadline: float) -> Iterator[bool]:
    """Hold ``flock`` on the directory itself (no lock file is left behind).

    Yields whether the lock is held: filesystems that do not support locking a directory
    (some network filesystems) yield ``False`` and the preload runs unlocked. Waiting for
    another holder ends with a :class:`PreloadError` at ``deadline`` (``time.monotonic``).
    """
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.debug("cannot open %s for locking: %s", dest, exc)
        yield False
        return
    try:
        locked = False
        waiting = False
        while not locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if not waiting:
                    log.info("waiting for another preload into %s to finish", dest)
                    waiting = True
                if time.monotonic() >= deadline:
                    raise PreloadError(
                        f"timed out waiting for another preload into {dest} to finish"
                    ) from None
                time.sleep(_POLL_SECONDS)
            except OSError as exc:
                log.debug("cannot lock %s (%s): continuing without a lock", dest, exc)
                break
        yield locked
    finally:
        os.close(fd)  # releases the lock
