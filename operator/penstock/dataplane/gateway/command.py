"""``penstock gateway``: run the stage gateway sidecar until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from penstock.dataplane.flags import ConfigError
from penstock.dataplane.gateway.config import GatewayConfig, build_parser, parse_config
from penstock.dataplane.gateway.server import Gateway
from penstock.dataplane.server import serve_until_stopped
from penstock.dataplane.serving import run_command

log = logging.getLogger("penstock.gateway")


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Start a gateway, run until ``stop`` is set (or SIGTERM/SIGINT), then drain and stop."""
    gateway = Gateway(config)

    def started() -> str:
        return (
            f"gateway for stage {config.stage} listening on {config.listen.host}:{gateway.port}"
            f" (admin {config.admin_listen.host}:{gateway.admin_port}), upstream {config.upstream}"
        )

    await serve_until_stopped(gateway, stop, started, log)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``penstock gateway`` with ``argv`` (the arguments after ``gateway``)."""
    return run_command(
        "gateway", argv, build_parser().print_help, parse_config, (ConfigError,), serve
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
