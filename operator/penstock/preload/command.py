"""``penstock preload``: the command line of the model preloading init container."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

from penstock.preload.archive import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_EXPANSION_RATIO,
    DEFAULT_MAX_FILES,
    RATIO_FLOOR_BYTES,
    Limits,
)
from penstock.preload.digest import normalize_sha256
from penstock.preload.errors import PreloadError
from penstock.preload.install import preload
from penstock.quantity import parse_non_negative_quantity

ENV_URI = "PENSTOCK_PRELOAD_URI"
ENV_DEST = "PENSTOCK_PRELOAD_DEST"
ENV_SHA256 = "PENSTOCK_PRELOAD_SHA256"
ENV_TIMEOUT = "PENSTOCK_PRELOAD_TIMEOUT_SECONDS"
ENV_MAX_BYTES = "PENSTOCK_PRELOAD_MAX_BYTES"
ENV_MAX_FILES = "PENSTOCK_PRELOAD_MAX_FILES"
ENV_MAX_RATIO = "PENSTOCK_PRELOAD_MAX_EXPANSION_RATIO"

DEFAULT_TIMEOUT_SECONDS = 600.0

_DESCRIPTION = """\
Fetch a model artifact into a directory, verify its SHA-256 and install it atomically.
Run as the init container of a stage pod, with DIR on a volume the model server mounts.

A single file lands at DIR/<last segment of the URI path>. A tar archive (.tar, .tar.gz,
.tgz, .tar.bz2, .tar.xz, or any file that is a tar archive) is unpacked into DIR, refusing
absolute paths, '..', links leaving DIR and device files, and stopping at the size, entry
count and expansion limits. Nothing is renamed into place before the download is complete
and verified; on failure no partial files remain. When DIR/.penstock-preload.json shows the
same URI (and digest) is installed and every file it lists still has its SHA-256 (each is
re-hashed), nothing is downloaded. Files of a previous model that the new one does not have
are removed; symlinks are never followed."""

_EPILOG = f"""\
every option can also be set through the environment:
  --uri {ENV_URI}, --dest {ENV_DEST},
  --sha256 {ENV_SHA256}, --timeout-seconds {ENV_TIMEOUT},
  --max-bytes {ENV_MAX_BYTES}, --max-files {ENV_MAX_FILES},
  --max-expansion-ratio {ENV_MAX_RATIO}
  (an option on the command line wins over its variable; an empty value means unset)

s3:// uses the standard AWS variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION, web identity (IRSA), and AWS_ENDPOINT_URL (or
AWS_ENDPOINT_URL_S3) for S3-compatible stores such as MinIO. http(s):// honours
HTTPS_PROXY, HTTP_PROXY and NO_PROXY.

exit status: 0 when the model is in place (fetched or already present), 1 otherwise,
with a one-line 'error: ...' message on stderr.

example:
  penstock preload --uri s3://models/minilm-l6.tar.gz --dest /models \\
      --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="penstock preload",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--uri",
        metavar="URI",
        help="the model artifact: file:///path (or /path), http(s)://host/path, or"
        f" s3://bucket/key [env: {ENV_URI}; required]",
    )
    parser.add_argument(
        "--dest",
        metavar="DIR",
        help=f"directory to install the model into; created if missing [env: {ENV_DEST}; required]",
    )
    parser.add_argument(
        "--sha256",
        metavar="HEX",
        help="expected SHA-256 of the fetched artifact (of the archive itself for an"
        " archive), 64 hex digits; without it the download is not verified"
        f" [env: {ENV_SHA256}]",
    )
    parser.add_argument(
        "--timeout-seconds",
        metavar="N",
        help="give up when the download has not finished after N seconds"
        f" [env: {ENV_TIMEOUT}; default: {DEFAULT_TIMEOUT_SECONDS:g}]",
    )
    parser.add_argument(
        "--max-bytes",
        metavar="QUANTITY",
        help="most bytes the download and an archive's unpacked files may take (e.g. 10Gi;"
        " the operator passes the model volume's sizeLimit)"
        f" [env: {ENV_MAX_BYTES}; default: 10Gi]",
    )
    parser.add_argument(
        "--max-files",
        metavar="N",
        help="most entries (files, directories, links) an archive may hold"
        f" [env: {ENV_MAX_FILES}; default: {DEFAULT_MAX_FILES}]",
    )
    parser.add_argument(
        "--max-expansion-ratio",
        metavar="R",
        help="most times its own size an archive may unpack to, checked once past"
        f" {RATIO_FLOOR_BYTES // 2**20} MiB; 0 disables"
        f" [env: {ENV_MAX_RATIO}; default: {DEFAULT_MAX_EXPANSION_RATIO:g}]",
    )
    return parser


@dataclass(frozen=True)
class Settings:
    uri: str
    dest: Path
    sha256: str | None
    timeout_seconds: float
    limits: Limits = field(default_factory=Limits)


def _limits(args: argparse.Namespace) -> Limits:
    raw, where = _pick(args.max_bytes, "--max-bytes", ENV_MAX_BYTES)
    max_bytes = DEFAULT_MAX_BYTES
    if raw is not None:
        try:
            amount = parse_non_negative_quantity(raw)
        except ValueError as error:
            raise PreloadError(f"{where} {raw!r}: {error}") from None
        if amount < 1:
            raise PreloadError(f"{where} {raw!r} must be at least 1 byte")
        max_bytes = int(amount)
    raw, where = _pick(args.max_files, "--max-files", ENV_MAX_FILES)
    max_files = DEFAULT_MAX_FILES
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise PreloadError(f"{where} {raw!r} is not a positive integer")
        max_files = int(raw)
    raw, where = _pick(args.max_expansion_ratio, "--max-expansion-ratio", ENV_MAX_RATIO)
    ratio = DEFAULT_MAX_EXPANSION_RATIO
    if raw is not None:
        ratio = _number(raw)
        if not (ratio >= 0 and math.isfinite(ratio)):
            raise PreloadError(f"{where} {raw!r} is not a number of 0 or more")
    return Limits(max_bytes, max_files, ratio)


def _number(text: str) -> float:
    """``text`` as a float; NaN (which every range check refuses) when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _pick(flag_value: str | None, flag: str, env: str) -> tuple[str | None, str]:
    """The value from the command line, else from the environment; and where it came from."""
    if flag_value is not None and flag_value.strip():
        return flag_value.strip(), flag
    env_value = os.environ.get(env, "").strip()
    if env_value:
        return env_value, env
    return None, flag


def parse_settings(argv: Sequence[str]) -> Settings:
    """Parse the command line and environment; raise :class:`PreloadError` or usage errors."""
    args = build_parser().parse_args(list(argv))
    uri, _ = _pick(args.uri, "--uri", ENV_URI)
    if uri is None:
        raise _UsageError(f"no model URI given: pass --uri or set {ENV_URI}")
    dest, _ = _pick(args.dest, "--dest", ENV_DEST)
    if dest is None:
        raise _UsageError(f"no destination directory given: pass --dest or set {ENV_DEST}")
    sha, sha_from = _pick(args.sha256, "--sha256", ENV_SHA256)
    digest = normalize_sha256(sha, field=sha_from)
    raw_timeout, timeout_from = _pick(args.timeout_seconds, "--timeout-seconds", ENV_TIMEOUT)
    timeout = DEFAULT_TIMEOUT_SECONDS
    if raw_timeout is not None:
        timeout = _number(raw_timeout)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise PreloadError(
                f"{timeout_from} {raw_timeout!r} is not a positive number of seconds"
            )
    return Settings(uri, Path(dest), digest, timeout, _limits(args))


class _StderrHandler(logging.Handler):
    """Writes each record as one line to the *current* ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


@contextmanager
def _step_lines_to_stderr() -> Iterator[None]:
    logger = logging.getLogger("penstock.preload")
    handler = _StderrHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Terminated(KeyboardInterrupt):
    """Raised on SIGTERM so that ``finally`` blocks remove temporary files."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``penstock preload`` with ``argv`` (the arguments after ``preload``).

    Returns the exit status: 0 when the model is in place, 1 on any failure (after
    printing ``error: ...`` to stderr, never a traceback).
    """
    if argv is None:
        argv = sys.argv[1:]
    try:
        with _step_lines_to_stderr(), _sigterm_raises():
            try:
                settings = parse_settings(argv)
            except SystemExit as exc:  # --help
                return exc.code if isinstance(exc.code, int) else 0
            except _UsageError as exc:
                build_parser().print_usage(sys.stderr)
                return _error(str(exc))
            preload(
                settings.uri,
                settings.dest,
                settings.sha256,
                timeout_seconds=settings.timeout_seconds,
                limits=settings.limits,
            )
            return 0
    except PreloadError as exc:
        return _error(str(exc))
    except _Terminated:
        return _error(
            "terminated (SIGTERM) before the model was installed; temporary files removed"
        )
    except KeyboardInterrupt:
        return _error("interrupted before the model was installed; temporary files removed")
    except Exception as exc:
        return _error(f"unexpected failure: {type(exc).__name__}: {exc}")
