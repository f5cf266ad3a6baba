"""The output of a batch run, written in input order, and the checkpoint that makes it resumable.

The output is a prefix of the answer: line k is the record of input line k. The checkpoint,
`OUTPUT.checkpoint` beside it, says how many lines and bytes of the output are durable (both
fsynced before the checkpoint is atomically replaced). A run killed at any point (SIGKILL
included) and started again with the same arguments truncates the output to the checkpoint's
bytes, skips that many input lines and goes on: every input line ends up in the output exactly
once. Records finished out of order wait in memory until the lines before them are done; the
caller bounds how far ahead it runs (`pending`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from penstock.errors import PenstockError

VERSION = 1


class CheckpointError(PenstockError):
    """The output or its checkpoint belongs to another run, or cannot be written."""


def fingerprint(target: str, source: str, options: Mapping[str, Any]) -> str:
    """What identifies a run: the Pipeline, the input, and the options that shape the output."""
    text = json.dumps({"target": target, "input": source, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoint")


class OrderedOutput:
    """Records by input index in; output lines in input order out, with a checkpoint."""

    def __init__(self, output: Path, run_id: str, sync_seconds: float = 1.0) -> None:
        self.output = output
        self.path = checkpoint_path(output)
        self.run_id = run_id
        self.sync_seconds = sync_seconds
        self.done = 0
        """Input lines whose record is in the output (durable once synced)."""
        self.failed = 0
        """Of those, the records that hold an error (kept across resumes, for the exit code)."""
        self.complete = False
        self.waiting_bytes = 0
        """The size of the records finished but waiting for an earlier line."""
        self._waiting: dict[int, tuple[bytes, bool]] = {}
        self._bytes = 0
        self._synced_at = time.monotonic()
        self._file: BinaryIO | None = None

    def open(self) -> int:
        """Open for writing, resuming from the checkpoint; the number of input lines done."""
        state = self._read_checkpoint()
        if state is None:
            if self.output.exists() and self.output.stat().st_size > 0:
                raise CheckpointError(
                    f"{self.output} exists and has no checkpoint ({self.path.name}): it is not "
                    "a batch output to resume; move it away or pick another --output"
                )
            mode = "wb"
        else:
            self.done, self._bytes = int(state["done"]), int(state["bytes"])
            self.failed = int(state.get("failed", 0))
            self.complete = bool(state.get("complete"))
            size = self.output.stat().st_size if self.output.exists() else 0
            if size < self._bytes:
                raise CheckpointError(
                    f"{self.output} is shorter ({size} bytes) than its checkpoint says "
                    f"({self._bytes}): it was changed since; remove both to start over"
                )
            mode = "r+b"
        try:
            file: BinaryIO = self.output.open(mode)  # type: ignore[assignment]
            # What was written after the last checkpoint may be torn: it is written again.
            file.truncate(self._bytes)
            file.seek(self._bytes)
            self._file = file
        except OSError as error:
            raise CheckpointError(f"--output {self.output}: {error.strerror or error}") from None
        if state is None:
            self.sync()
        return self.done

    def _read_checkpoint(self) -> dict[str, Any] | None:
        try:
            state: Any = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{self.path}: unreadable checkpoint: {error}") from None
        if not isinstance(state, dict) or state.get("version") != VERSION:
            raise CheckpointError(f"{self.path}: not a checkpoint of this version of penstock")
        if state.get("run") != self.run_id:
            raise CheckpointError(
                f"{self.output} belongs to another batch run (other Pipeline, input or options); "
                f"resume it with the same arguments, or remove {self.output} and {self.path.name}"
            )
        return state

    @property
    def pending(self) -> int:
        """Records finished but waiting for an earlier line."""
        return len(self._waiting)

    def put(self, index: int, record: Mapping[str, Any]) -> None:
        """The record of input line `index`; written once every earlier line is."""
        if index < self.done or index in self._waiting:
            raise CheckpointError(f"input line {index + 1} has a record already")
        # The records are values parsed by a strict JSON parser (no NaN, no lone surrogates).
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        data = (line + "\n").encode()
        self._waiting[index] = (data, "error" in record)
        self.waiting_bytes += len(data)
        assert self._file is not None, "open() first"
        while self.done in self._waiting:
            data, failed = self._waiting.pop(self.done)
            self.waiting_bytes -= len(data)
            self._file.write(data)
            self._bytes += len(data)
            self.done += 1
            self.failed += failed

    def sync_due(self) -> bool:
        return time.monotonic() - self._synced_at >= self.sync_seconds

    def snapshot(self) -> tuple[int, int, int]:
        """(done, bytes, failed) as of now; take it where put() runs, then sync() it in a
        thread while put() goes on: the checkpoint never counts bytes of a line it does not."""
        self._synced_at = time.monotonic()
        return self.done, self._bytes, self.failed

    def sync(self, snapshot: tuple[int, int, int] | None = None, *, complete: bool = False) -> None:
        """Make the output durable up to the snapshot (default: now), then record that in the
        checkpoint. Blocking: from async code, call it in a thread."""
        assert self._file is not None
        done, size, failed = snapshot or self.snapshot()
        self._file.flush()
        os.fsync(self._file.fileno())
        self.complete = complete
        state = {
            "version": VERSION,
            "run": self.run_id,
            "done": done,
            "bytes": size,
            "failed": failed,
            "complete": complete,
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w") as file:
            json.dump(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self, *, complete: bool = False) -> None:
        if self._file is None:
            return
        self.sync(complete=complete and not self._waiting)
        self._file.close()
        self._file = None
