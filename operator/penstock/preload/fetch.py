"""Streaming a model artifact from its URI into an open (temporary) file.

Every byte is hashed as it is written, and the byte count is checked against the size the
source declared (HTTP ``Content-Length``, the S3 object size, the local file size), so a
connection cut short is an error rather than a silently truncated model.

- ``file://`` and absolute paths: read directly.
- ``http://``, ``https://``: one streaming GET with aiohttp;
  redirects are followed, ``HTTP(S)_PROXY``/``NO_PROXY`` are honoured, and the body is
  taken as stored (``Accept-Encoding: identity``, no transparent decompression).
- ``s3://``: one streaming GetObject with boto3 and the standard AWS configuration: ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
  web identity (IRSA) etc., and ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for S3-compatible
  stores such as MinIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from penstock.preload.errors import PreloadError
from penstock.preload.source import Source

log = logging.getLogger("penstock.preload")

CHUNK_SIZE = 1024 * 1024
PROGRESS_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class Fetched:
    """What was written: the byte count and its SHA-256 (hex)."""

    size: int
    sha256: str


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _Sink:
    """Writes chunks to the output file, hashing and counting them."""

    def __init__(self, out: BinaryIO, source: Source, max_bytes: int | None = None) -> None:
        self._out = out
        self._source = source
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0
        self.declared: int | None = None
        self._last_progress = time.monotonic()

    def write(self, chunk: bytes) -> None:
        try:
            self._out.write(chunk)
        except OSError as exc:
            raise PreloadError(
                f"could not write {self._source.display} to disk after {human_size(self.size)}:"
                f" {exc.strerror or exc}"
            ) from None
        self._hash.update(chunk)
        self.size += len(chunk)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise PreloadError(
                f"{self._source.display} is larger than {self._max_bytes} bytes"
                " (limit: --max-bytes, the model volume's sizeLimit in a cluster)"
            )
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_SECONDS:
            self._last_progress = now
            total = f" of {human_size(self.declared)}" if self.declared is not None else ""
            log.info("received %s%s", human_size(self.size), total)

    def cut_short(self, detail: str = "") -> PreloadError:
        expected = f" of the {self.declared} declared" if self.declared is not None else ""
        why = f": {detail}" if detail else ""
        return PreloadError(
            f"download of {self._source.display} was cut short: received {self.size}"
            f"{expected} bytes{why}"
        )

    def finish(self) -> Fetched:
        if self.declared is not None and self.size != self.declared:
            raise self.cut_short()
        try:
            self._out.flush()
            os.fsync(self._out.fileno())
        except OSError as exc:
            raise PreloadError(
                f"could not write {self._source.display} to disk: {exc.strerror or exc}"
            ) from None
        return Fetched(self.size, self._hash.hexdigest())


def fetch(
    source: Source,
    out: BinaryIO,
    *,
    timeout_seconds: float,
    deadline: float | None = None,
    max_bytes: int | None = None,
) -> Fetched:
    """Copy the artifact named by ``source`` into ``out``; raise :class:`PreloadError`.

    The transfer (connecting included) must end within ``timeout_seconds``, or by
    ``deadline`` (a ``time.monotonic()`` value) when that is given: ``timeout_seconds`` is
    then only the figure reported in the error.
    """
    if not (timeout_seconds > 0 and math.isfinite(timeout_seconds)):
        raise PreloadError(f"timeout must be a positive number of seconds, got {timeout_seconds}")
    if deadline is None:
        deadline = time.monotonic() + timeout_seconds
    sink = _Sink(out, source, max_bytes)
    try:
        budget = deadline - time.monotonic()
        if budget <= 0:
            raise TimeoutError
        if source.scheme == "file":
            _fetch_file(source, sink, deadline)
        elif source.scheme == "s3":
            _fetch_s3(source, sink, deadline)
        else:
            asyncio.run(_fetch_remote(source, sink, budget))
    except TimeoutError:
        raise PreloadError(
            f"fetching {source.display} timed out after {timeout_seconds:g}s"
            f" ({human_size(sink.size)} received)"
        ) from None
    return sink.finish()


def _fetch_file(source: Source, sink: _Sink, deadline: float) -> None:
    path = Path(source.location)
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            sink.declared = st.st_size
            while chunk := f.read(CHUNK_SIZE):
                sink.write(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError
    except TimeoutError:  # an OSError: keep it from the handlers below
        raise
    except IsADirectoryError:
        raise PreloadError(
            f"{source.display} is a directory: point the URI at a single file, or at a tar"
            " archive (.tar, .tar.gz, .tgz) of the model directory"
        ) from None
    except FileNotFoundError:
        raise PreloadError(f"{source.display} does not exist") from None
    except PermissionError:
        raise PreloadError(f"{source.display} is not readable (permission denied)") from None
    except OSError as exc:
        raise PreloadError(f"could not read {source.display}: {exc.strerror or exc}") from None


async def _fetch_remote(source: Source, sink: _Sink, timeout_seconds: float) -> None:
    async with asyncio.timeout(timeout_seconds):
        await _fetch_http(source, sink)


async def _fetch_http(source: Source, sink: _Sink) -> None:
    # The overall deadline comes from asyncio.timeout(); aiohttp's own default total timeout
    # (5 minutes) would cut off large models, so it is disabled here.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=True) as s,
            s.get(source.location, headers={"Accept-Encoding": "identity"}) as resp,
        ):
            if resp.status >= 400:
                raise PreloadError(
                    f"fetching {source.display} failed: HTTP {resp.status} {resp.reason or ''}".rstrip()
                )
            sink.declared = resp.content_length
            try:
                async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
                    sink.write(chunk)
            except aiohttp.ClientPayloadError as exc:
                raise sink.cut_short(_short(exc)) from None
    except aiohttp.ClientConnectorError as exc:
        raise PreloadError(
            f"could not connect to {exc.host}:{exc.port} to fetch {source.display}:"
            f" {exc.os_error.strerror or exc.os_error}"
        ) from None
    except aiohttp.ClientError as exc:
        raise PreloadError(
            f"fetching {source.display} failed: {type(exc).__name__}: {_short(exc)}"
        ) from None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _named(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` is an instance of a class with one of ``names`` (botocore ships no type
    information, so its exceptions are matched by name)."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def s3_endpoint_url() -> str | None:
    """The S3 endpoint from the standard AWS variables, if one is set."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _fetch_s3(source: Source, sink: _Sink, deadline: float) -> None:
    # Imported here: boto3 takes ~0.3 s to import and only s3:// needs it.
    import boto3
    from botocore.config import Config

    bucket, key = source.location.split("/", 1)
    budget = max(deadline - time.monotonic(), 0.001)
    config = Config(
        connect_timeout=min(30.0, budget),
        read_timeout=min(60.0, budget),
        retries={"mode": "standard", "max_attempts": 3},
    )
    client: Any = None
    try:
        client = boto3.session.Session().client("s3", endpoint_url=s3_endpoint_url(), config=config)
        body = client.get_object(Bucket=bucket, Key=key)
        sink.declared = int(body["ContentLength"])
        stream = body["Body"]
        try:
            while chunk := stream.read(CHUNK_SIZE):
                sink.write(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError
        finally:
            stream.close()
    except (PreloadError, TimeoutError):
        raise
    except Exception as exc:
        raise _s3_error(exc, source, sink, client, bucket, key) from None
    finally:
        if client is not None:
            client.close()


def _s3_error(
    exc: Exception, source: Source, sink: _Sink, client: Any, bucket: str, key: str
) -> PreloadError:
    """The clear error for what boto3 raised while fetching ``source``."""
    code = ""
    if _named(exc, "ClientError"):
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    if code in ("NoSuchKey", "404", "NotFound"):
        if client is not None and _is_prefix(client, bucket, key):
            return PreloadError(
                f"{source.display} is a key prefix (a directory), not an object: point the URI at"
                " a single object, or at a tar archive (.tar, .tar.gz, .tgz) of the model"
                " directory"
            )
        return PreloadError(f"{source.display} does not exist (no such bucket or object)")
    if code == "NoSuchBucket":
        return PreloadError(f"{source.display} does not exist (no such bucket or object)")
    if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return PreloadError(
            f"access to {source.display} was denied: check the credentials"
            f" (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the pod's IAM role) and the bucket"
            f" policy ({_short(exc)})"
        )
    if _named(exc, "NoCredentialsError", "PartialCredentialsError"):
        return PreloadError(
            f"no usable AWS credentials to fetch {source.display}: set AWS_ACCESS_KEY_ID and"
            f" AWS_SECRET_ACCESS_KEY, or give the pod an IAM role ({_short(exc)})"
        )
    if _named(exc, "EndpointConnectionError", "ConnectTimeoutError"):
        return PreloadError(
            f"could not connect to the S3 endpoint to fetch {source.display}: {_short(exc)}"
        )
    if _named(exc, "IncompleteReadError", "ResponseStreamingError", "ReadTimeoutError"):
        return sink.cut_short(_short(exc))
    return PreloadError(f"fetching {source.display} failed: {type(exc).__name__}: {_short(exc)}")


def _is_prefix(client: Any, bucket: str, key: str) -> bool:
    """Whether ``key`` names a "directory" of objects (best effort: only to improve a message)."""
    with contextlib.suppress(Exception):
        listing = client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
        return bool(listing.get("KeyCount", 0))
    return False
