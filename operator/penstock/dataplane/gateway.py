"""``penstock gateway``: run the stage gateway sidecar until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from penstock.dataplane.config import ConfigError, GatewayConfig, build_parser, parse_config
from penstock.dataplane.proxy import Gateway
from penstock.dataplane.serving import run_command, stop_on_signals

log = logging.getLogger("penstock.gateway")


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Start a gateway, run until ``stop`` is set (or SIGTERM/SIGINT), then drain and stop."""
    stop = stop or asyncio.Event()
    gateway = Gateway(config)
    with stop_on_signals(stop):
        try:
            await gateway.start()
            log.info(
                "gateway for stage %s listening on %s:%d (admin %s:%d), upstream %s",
                config.stage,
                config.listen.host,
                gateway.port,
                config.admin_listen.host,
                gateway.admin_port,
                config.upstream,
            )
            await stop.wait()
            log.info("stopping")
        finally:
            await gateway.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``penstock gateway`` with ``argv`` (the arguments after ``gateway``)."""
    return run_command(
        "gateway", argv, build_parser().print_help, parse_config, (ConfigError,), serve
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
