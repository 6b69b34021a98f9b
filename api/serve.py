"""``factory api``: the REST API (and the MCP server over HTTP) on their own port.

One process, one ``Factory``: the API app is mounted at ``/api``, the MCP server at ``/mcp``
(``api.mcp.mount_mcp``, whose session manager runs in the app's lifespan). Runs submitted or decided
through either are handed to a worker, or driven by this process when none is alive (``Operations``),
never by a request. ``factory up`` mounts the same apps beside the chat instead (``mount``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from api.mcp.http import mount_mcp
from api.rest.app import MOUNT, create_app, guard_for
from factory.listen import port_free
from factory.operations import Operations, operating
from factory.settings import Settings
from factory.tokens_pg import PostgresTokenStore
from factory.wiring import Factory, open_factory, responders_for_run
from factory.worker import deliver_webhooks


def fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop for a process that serves HTTP (several times the requests per core of
    asyncio's own), or None where it is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def mount(app: Any, ops: Operations, settings: Settings, *, host: str | None = None) -> None:
    """Serve the REST API under ``/api`` and the MCP server at ``/mcp`` of a Starlette app (``factory
    api``'s own, or the chat's), before its own routes, behind one set of tokens and rate limits (its
    tokens in the factory's PostgreSQL). Serve the app with ``lifespan="on"`` (MCP's session manager)."""
    guard = guard_for(PostgresTokenStore(ops.factory.pool), settings)
    app.router.routes.insert(0, Mount(MOUNT, app=create_app(ops, guard, settings)))
    mount_mcp(app, ops, settings, host=host, guard=guard)


def standalone(ops: Operations, settings: Settings, *, host: str | None = None) -> Starlette:
    """The REST API at ``/api`` and the MCP server at ``/mcp``."""
    app = Starlette()
    mount(app, ops, settings, host=host)
    return app


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    factory: Factory | None = None,
) -> None:
    """Serve the API until SIGINT/SIGTERM (uvicorn's own handling); ``on_ready(url)`` once it listens."""
    import uvicorn

    port_free(host, port)
    async with _factory(settings, factory) as f, operating(f) as ops:
        # log_config=None: uvicorn's lines go through the factory's handlers (format, redaction)
        # lifespan="on": the MCP session manager runs in the app's lifespan (api.mcp.http)
        config = uvicorn.Config(standalone(ops, settings, host=host), host=host, port=port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=5, log_config=None)  # fmt: skip
        server = uvicorn.Server(config)
        watcher = asyncio.create_task(_announce(server, host, port, on_ready))
        # webhooks are delivered here too (as by every worker: a consumer group shares the events), so
        # `factory api` without a worker still notifies
        stop = asyncio.Event()
        notifying = asyncio.create_task(deliver_webhooks(f, stop), name="webhooks")
        sweeping = asyncio.create_task(ops.drivers.sweep(stop), name="sweep")  # while no worker is alive
        try:
            await server.serve()
        finally:
            watcher.cancel()
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.gather(notifying, sweeping), 10)


@contextlib.asynccontextmanager
async def _factory(settings: Settings, given: Factory | None) -> AsyncIterator[Factory]:
    if given is not None:
        yield given
        return
    async with open_factory(settings, serve=responders_for_run(settings)) as factory:
        yield factory


async def _announce(
    server: Any, host: str, port: int, on_ready: Callable[[str], Awaitable[None] | None] | None
) -> None:
    while not server.started:  # noqa: ASYNC110  (uvicorn offers no event for it)
        await asyncio.sleep(0.05)
    bound = port
    with contextlib.suppress(Exception):  # --port 0: the port the system chose
        bound = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{bound}"
    if on_ready is not None:
        done = on_ready(url)
        if done is not None:
            await done
