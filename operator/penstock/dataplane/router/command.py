"""`penstock router`: run the pipeline's router until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from penstock.dataplane.flags import ConfigError
from penstock.dataplane.router.config import RouterConfig, build_parser, parse_config
from penstock.dataplane.router.server import Router
from penstock.dataplane.server import serve_until_stopped
from penstock.dataplane.serving import run_command

log = logging.getLogger("penstock.router")


async def serve(config: RouterConfig, stop: asyncio.Event | None = None) -> None:
    """Start a router, run until ``stop`` is set (or SIGTERM/SIGINT), then stop."""
    router, topology = Router(config), config.topology

    def started() -> str:
        return (
            f"router for pipeline {topology.namespace}/{topology.pipeline} listening on"
            f" {config.listen.host}:{router.port} (admin {config.admin_listen.host}:"
            f"{router.admin_port}), output {topology.output},"
            f" stages {', '.join(sorted(topology.needed()))}"
        )

    await serve_until_stopped(router, stop, started, log)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``penstock router`` with ``argv`` (the arguments after ``router``)."""
    return run_command(
        "router", argv, build_parser().print_help, parse_config, (ConfigError,), serve
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
