"""The input of a batch run: JSON lines from a file, stdin, http(s):// or s3://, one item each.

A line that cannot be sent (not JSON, too long, empty) is still an item: it gets an error
record in the output, at its place, so the output holds one line per input line.
"""

from __future__ import annotations

import io
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from penstock.dataplane.jsonbody import JsonBodyError, parse
from penstock.errors import PenstockError

T = TypeVar("T")


class InputError(PenstockError):
    """The input cannot be read at all (missing file, unreachable URL): nothing is sent."""


@dataclass(frozen=True)
class Item:
    index: int
    """0-based position of the line in the input."""
    body: bytes | None
    """Canonical JSON to send; None when the line cannot be sent (see error)."""
    id: Any = None
    """The value of the --id-field of the line's object, when it has one."""
    error: str | None = None
    position: int = 0
    """Its place in this run's output: the index, or its rank within a shard."""


def parse_item(
    index: int, line: bytes, id_field: str | None, max_bytes: int, position: int | None = None
) -> Item:
    """The item of one input line (without its line end)."""
    place = index if position is None else position
    line = line.rstrip(b"\r\n")
    where = f"input line {index + 1}"
    if len(line) > max_bytes:
        error = f"{where}: {len(line)} bytes, over --max-line-bytes"
        return Item(index, None, error=error, position=place)
    if not line.strip():
        error = f"{where}: empty line (one JSON value per line)"
        return Item(index, None, error=error, position=place)
    try:
        value, body = parse(line)
    except JsonBodyError as error:
        return Item(index, None, error=f"{where} {error}", position=place)
    item_id = value.get(id_field) if id_field and isinstance(value, dict) else None
    return Item(index, body, id=item_id, position=place)


def describe(source: str) -> str:
    return "stdin" if source == "-" else source


def open_input(source: str, timeout: float = 60) -> IO[bytes]:
    """A binary stream of the input's lines: `-` (stdin), a path, http(s)://, or s3://."""
    if source == "-":
        return sys.stdin.buffer
    scheme = urlsplit(source).scheme
    if scheme in ("http", "https"):
        return _open_http(source, timeout)
    if scheme == "s3":
        return _open_s3(source)
    if scheme:
        raise InputError(f"input {source}: unsupported scheme {scheme!r} (file, -, http(s), s3)")
    try:
        return Path(source).open("rb")
    except OSError as error:
        raise InputError(f"input {source}: {error.strerror or error}") from None


# Waits between tries of a GET or PUT that failed for a reason that may pass (5xx, no answer).
RETRY_WAITS = (1.0, 2.0, 4.0)


def retrying(what: str, call: Callable[[], T]) -> T:
    """call(), tried again after RETRY_WAITS when it raises a TransientError."""
    for wait in (*RETRY_WAITS, None):
        try:
            return call()
        except TransientError as error:
            if wait is None:
                raise InputError(f"{what}: {error} (after {len(RETRY_WAITS) + 1} tries)") from None
            time.sleep(wait)
    raise AssertionError("unreachable")


class TransientError(Exception):
    """A failure worth another try."""


def _open_http(source: str, timeout: float) -> IO[bytes]:
    def get() -> IO[bytes]:
        try:
            response: IO[bytes] = urllib.request.urlopen(source, timeout=timeout)
        except urllib.error.HTTPError as error:
            if error.code >= 500 or error.code == 429:
                raise TransientError(f"HTTP {error.code} {error.reason}") from None
            raise InputError(f"input {source}: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise TransientError(f"cannot connect: {getattr(error, 'reason', error)}") from None
        return response

    return retrying(f"input {source}", get)


def _open_s3(source: str) -> IO[bytes]:
    # Imported here: boto3 takes ~0.3 s to import and only s3:// needs it.
    import boto3
    from botocore.config import Config

    from penstock.preload.fetch import s3_endpoint_url

    location = source.removeprefix("s3://")
    bucket, _, key = location.partition("/")
    if not bucket or not key:
        raise InputError(f"input {source}: expected s3://BUCKET/KEY")
    config = Config(connect_timeout=30, read_timeout=60, retries={"mode": "standard"})
    try:
        client = boto3.session.Session().client("s3", endpoint_url=s3_endpoint_url(), config=config)
        body: Any = client.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as error:  # botocore raises many unrelated types
        raise InputError(f"input {source}: {type(error).__name__}: {error}") from None
    return io.BufferedReader(_RawBody(body))


class _RawBody(io.RawIOBase):
    """botocore's streaming body as a raw stream, so that it reads line by line."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data: bytes = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def read_lines(stream: IO[bytes], count: int) -> list[bytes]:
    """Up to `count` lines (fewer only at the end); blocking: call it in a thread."""
    lines = []
    for _ in range(count):
        line = stream.readline()
        if not line:
            break
        lines.append(line)
    return lines


def skip_lines(stream: IO[bytes], count: int) -> int:
    """Skip `count` lines (a resumed run's done items); how many there were."""
    skipped = 0
    while skipped < count and stream.readline():
        skipped += 1
    return skipped


def count_lines(source: str) -> int | None:
    """The number of lines of a local file (for the ETA), None for a stream."""
    if source == "-" or urlsplit(source).scheme:
        return None
    total = 0
    ended = True
    try:
        with Path(source).open("rb") as stream:
            while chunk := stream.read(1 << 20):
                total += chunk.count(b"\n")
                ended = chunk.endswith(b"\n")
    except OSError:
        return None  # reading it says why (open_input)
    return total if ended else total + 1
