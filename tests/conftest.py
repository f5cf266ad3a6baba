"""Fixtures every test directory shares (helpers in tests/support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for one test."""
    server = RedisServer()
    yield server
    server.close()
