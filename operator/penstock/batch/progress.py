"""Progress of a batch run on stderr: a bar redrawn in place on a terminal, plain lines else."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    def __init__(
        self,
        total: int | None,
        stream: TextIO | None = None,
        *,
        terminal: bool | None = None,
        every_seconds: float = 10.0,
    ) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        # A bar is redrawn at most 10 times a second; plain lines every `every_seconds`.
        self.every = 0.1 if self.terminal else every_seconds
        self._last = 0.0
        self._line = ""

    def text(self, done: int, failed: int, rate: float, concurrency: int) -> str:
        parts = []
        if self.total:
            share = min(1.0, done / self.total)
            filled = int(share * 24)
            parts.append(f"[{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total}")
        else:
            parts.append(f"{done} done")
        parts.append(f"{rate:.1f} items/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - done) / rate)}")
        parts.append(f"errors {failed}")
        parts.append(f"in flight <= {concurrency}")
        return "  ".join(parts)

    def update(self, *, done: int, failed: int, rate: float, concurrency: int) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self._line = self.text(done, failed, rate, concurrency)
        if self.terminal:
            self.stream.write("\r\x1b[2K" + self._line)
        else:
            self.stream.write(f"penstock batch: {self._line}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.terminal and self._line:
            self.stream.write("\n")
            self.stream.flush()
