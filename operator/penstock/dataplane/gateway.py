"""``penstock gateway``: run the stage gateway sidecar until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from penstock.dataplane.config import ConfigError, GatewayConfig, build_parser, parse_config
from penstock.dataplane.proxy import Gateway

log = logging.getLogger("penstock.gateway")


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Start a gateway, run until ``stop`` is set (or SIGTERM/SIGINT), then drain and stop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    gateway = Gateway(config)
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
        for signum in handled:
            loop.remove_signal_handler(signum)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a faster proxy), else asyncio's default."""
    try:
        module = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``penstock gateway`` with ``argv`` (the arguments after ``gateway``).

    Exit status: 0 after a clean stop, 1 when the gateway cannot start (e.g. a port in use),
    2 on bad flags or values, with a one-line ``error: ...`` on stderr and no traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        build_parser().print_help()
        return 0
    try:
        config = parse_config(args)
    except ConfigError as error:
        print(f"penstock gateway: error: {error}", file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(config))
    except OSError as error:
        print(f"penstock gateway: error: cannot start: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
