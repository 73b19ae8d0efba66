"""Serving an aiohttp app until SIGINT or SIGTERM, and its background tasks: the gateway and the monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from aiohttp import web

from .logs import configure as configure_logging
from .settings import Settings

log = logging.getLogger(__name__)


async def serve(app: web.Application, settings: Settings, host: str, port: int, what: str,
                ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve ``app`` on ``host:port`` (TLS only, with ``ssl_context``) until a signal, then run its cleanup."""
    configure_logging(settings, own_handler=True)
    runner = web.AppRunner(app)
    try:
        # Within the try: a start that fails half-way (a broker out of reach) must still
        # close what started before it, whose threads (the SQLite store's) would keep the
        # process alive, never exiting for its supervisor to restart it.
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        log.info("%s listening on %s://%s:%s", what, "https" if ssl_context else "http", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel an app's background tasks and wait until they have finished."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
