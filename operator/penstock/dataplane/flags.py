"""Flags and environment variables of the data-plane commands, with one policy for both servers.

Every flag ``--foo-bar`` can also be set with ``<PREFIX>FOO_BAR`` (penstock.contract.wire). The
flag wins over its variable; an empty flag or variable counts as unset, except for a flag whose
empty value means something (``keep_empty``). A bad value is a :class:`ConfigError` naming the
flag or variable it came from (the command exits 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

from penstock.contract.wire import env_name


class ConfigError(Exception):
    """A bad flag or value; the message names it."""


class FlagParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_host_port(text: str) -> HostPort:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} has no numeric port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return HostPort(host, port)


def http_url(text: str) -> str:
    """An http(s)://host[:port][/path] URL, stripped of spaces and a trailing slash."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s)://host[:port] URL")
    return text.strip().rstrip("/")


def pick(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    prefix: str,
    flag: str,
    keep_empty: bool = False,
) -> tuple[str | None, str]:
    """The value of ``flag`` (stripped) and where it came from (the flag or its variable)."""
    value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if isinstance(value, str) and (value.strip() or keep_empty):
        return value.strip(), flag
    variable = env_name(prefix, flag)
    raw = environ.get(variable)
    if raw is not None and (raw.strip() or keep_empty):
        return raw.strip(), variable
    return None, variable
