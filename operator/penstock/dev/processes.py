"""The processes of ``penstock dev``: started in their own process groups, waited for until
ready, stopped as a whole (SIGTERM, then SIGKILL), with their logs' tails in errors."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from penstock.errors import PenstockError

LOG_TAIL_LINES = 30


class DevError(PenstockError):
    """Something that stops ``penstock dev``; the message says what and where."""


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    ready_url: str | None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    ready: bool = False

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = text.splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in kept) or "    (log is empty)"


def _die_with_parent() -> None:
    """In the child: get SIGTERM if ``penstock dev`` itself dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(proc: Proc, env: dict[str, str]) -> None:
    log = proc.log.open("wb")
    try:
        proc.popen = subprocess.Popen(
            proc.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=proc.cwd,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    except OSError as error:
        raise DevError(f"{proc.name}: cannot start {proc.argv[0]}: {error}") from None
    finally:
        log.close()


def stop_all(procs: Sequence[Proc], grace: float = 5.0) -> None:
    """SIGTERM every process group, wait, SIGKILL what is left (reverse start order)."""
    running = [proc for proc in reversed(procs) if proc.popen is not None]
    for proc in running:
        assert proc.popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        assert proc.popen is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in running:
        assert proc.popen is not None
        # The group may outlive its leader: kill whatever of it is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=2)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def exited(procs: Sequence[Proc]) -> Proc | None:
    for proc in procs:
        if proc.popen is not None and proc.popen.poll() is not None:
            return proc
    return None


def failure(proc: Proc, what: str) -> DevError:
    return DevError(f"{proc.name} {what}; log {proc.log} ends with:\n{proc.tail()}")


def wait_ready(procs: Sequence[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        dead = exited(procs)
        if dead is not None:
            assert dead.popen is not None
            raise failure(dead, f"exited with status {dead.popen.returncode} while starting")
        for proc in procs:
            if not proc.ready:
                proc.ready = proc.ready_url is None or _ok(proc.ready_url)
        waiting = [proc for proc in procs if not proc.ready]
        if not waiting:
            return
        if time.monotonic() > deadline:
            first = waiting[0]
            others = ", ".join(proc.name for proc in waiting)
            raise failure(
                first,
                f"was not ready after {timeout:g} s ({first.ready_url}; waiting for {others})",
            )
        time.sleep(0.2)
