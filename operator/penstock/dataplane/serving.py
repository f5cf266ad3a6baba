"""What the gateway and the router share as servers: listening, signals, the command's main."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from penstock.dataplane.connections import GuardedSite, Listener, limits_middleware
from penstock.dataplane.limits import Identity, ServerLimits


async def listen(
    app: web.Application,
    host: str,
    port: int,
    runners: list[web.AppRunner],
    limits: ServerLimits | None = None,
    identity: Identity | None = None,
) -> int:
    """Serve app on host:port (0 picks a free port); returns the port. The runner is appended
    to runners so the caller can clean it up. Connections are bounded and timed by ``limits``
    (see dataplane/connections); ``identity`` names the server in its error answers."""
    limits = limits or ServerLimits()
    app.middlewares.insert(0, limits_middleware)  # outermost: it sees the handler's answer
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    runners.append(runner)
    options = {
        "access_log": None,
        # aiohttp's own idle timer, a backstop only: the listener closes idle connections first.
        "keepalive_timeout": limits.idle_timeout + limits.header_timeout,
    }
    listener = Listener(limits, identity or Identity())
    site = GuardedSite(runner, host, port, listener, options)
    await site.start()
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return port  # pragma: no cover - TCP sites always have a (host, port) address


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set stop on SIGTERM/SIGINT while inside (only possible in the main thread)."""
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
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


def run_command(
    name: str,
    argv: Sequence[str] | None,
    print_help: Callable[[], None],
    parse: Callable[[list[str]], Any],
    errors: tuple[type[Exception], ...],
    serve: Callable[[Any], Awaitable[None]],
) -> int:
    """The main of `penstock <name>`: 0 after a clean stop, 1 when it cannot start (e.g. a port
    in use), 2 on bad flags or values, with a one-line `error: ...` and no traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print_help()
        return 0
    try:
        config = parse(args)
    except errors as error:
        print(f"penstock {name}: error: {error}", file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(config))  # type: ignore[arg-type]
    except OSError as error:
        print(f"penstock {name}: error: cannot start: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
