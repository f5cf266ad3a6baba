"""Parsing the model URI into something the fetchers can use."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from penstock.preload.errors import PreloadError

Scheme = Literal["file", "http", "https", "s3"]

SUPPORTED = "file:// (or an absolute path), http://, https://, s3://"

#: Names inside the destination that belong to the preloader itself.
MARKER_NAME = ".penstock-preload.json"
TEMP_PREFIX = ".penstock-preload-"


@dataclass(frozen=True)
class Source:
    """A parsed model URI.

    ``location`` is what the fetcher for ``scheme`` needs: a local path for ``file``, the
    full URL for ``http``/``https``, and ``bucket/key`` for ``s3``. ``basename`` is the
    last segment of the URI path: the name a single (non-archive) file is stored under.
    """

    uri: str
    scheme: Scheme
    location: str
    basename: str

    @property
    def display(self) -> str:
        """The URI with any password and query string hidden, for logs and errors."""
        return redact(self.uri)


def redact(uri: str) -> str:
    """Hide secrets a URI may carry: the password of ``user:pass@`` and the query string
    (pre-signed URLs carry their signature there)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _basename(uri: str, path: str, *, what: str) -> str:
    name = posixpath.basename(path)
    if not name:
        raise PreloadError(
            f"model URI {redact(uri)!r} names a {what} ending in '/', not a file: point it at"
            " a single file or a tar archive (.tar, .tar.gz, .tgz) of the model directory"
        )
    if name in (".", "..") or "/" in name or "\x00" in name:
        raise PreloadError(f"model URI {redact(uri)!r} ends in an unusable file name {name!r}")
    if name == MARKER_NAME or name.startswith(TEMP_PREFIX):
        raise PreloadError(
            f"model URI {redact(uri)!r} ends in {name!r}, a name reserved for the preloader's"
            " own bookkeeping files"
        )
    return name


def parse_uri(uri: str) -> Source:
    """Parse and validate a model URI; raise :class:`PreloadError` naming it if unusable."""
    text = uri.strip()
    if not text:
        raise PreloadError(f"model URI is empty: expected one of {SUPPORTED}")
    if text.startswith("/"):
        return Source(text, "file", text, _basename(text, text, what="path"))
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise PreloadError(f"model URI {redact(text)!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PreloadError(
                f"model URI {text!r} names host {parts.netloc!r}: file:// URIs must be local,"
                " like file:///models/model.bin"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise PreloadError(f"model URI {text!r} must name an absolute path")
        return Source(text, "file", path, _basename(text, path, what="path"))
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise PreloadError(f"model URI {redact(text)!r} has no host name")
        try:
            parts.port  # noqa: B018  (validates the port)
        except ValueError as exc:
            raise PreloadError(f"model URI {redact(text)!r} has a bad port: {exc}") from None
        name = _basename(text, unquote(parts.path), what="URL path")
        return Source(text, "http" if scheme == "http" else "https", text, name)
    if scheme == "s3":
        bucket = parts.netloc
        key = parts.path.lstrip("/")
        if not bucket:
            raise PreloadError(f"model URI {text!r} has no bucket: expected s3://BUCKET/KEY")
        if parts.query or parts.fragment:
            raise PreloadError(
                f"model URI {text!r} has a '?' or '#' part, which s3:// URIs do not support"
            )
        if not key:
            raise PreloadError(f"model URI {text!r} has no object key: expected s3://BUCKET/KEY")
        name = _basename(text, key, what="key prefix")
        return Source(text, "s3", f"{bucket}/{key}", name)
    if not scheme or len(scheme) == 1:
        # "models/x.bin" or a Windows-like "c:/x": neither absolute nor a URI.
        raise PreloadError(
            f"model URI {text!r} is neither an absolute path nor a URI: expected one of {SUPPORTED}"
        )
    raise PreloadError(
        f"model URI {redact(text)!r} has unsupported scheme '{parts.scheme}://': expected one"
        f" of {SUPPORTED}"
    )
