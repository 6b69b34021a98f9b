"""The MCP server over streamable HTTP at ``/mcp``, beside the REST API (``factory api``) or the chat.

Every request carries ``Authorization: Bearer <token>``; ``Authenticated`` verifies it and takes it
from its rate (``api.auth.Guard``, as the REST API does) before the MCP transport sees the request,
and leaves the ``ApiToken`` in the ASGI scope for the tools (``api.mcp.identity``). A refusal is an
RFC 9457 problem (401 with ``WWW-Authenticate``, or 429 with ``Retry-After``), as the REST API's are.

The transport is stateless: no session lives in the process, so a restart or a second API process
behind a balancer loses nothing. Its session manager still needs a task group for the app's lifetime:
``mount_mcp`` wraps the app's lifespan to run it, so the server must run the lifespan
(uvicorn ``lifespan="on"``). Mounting again on the same app (a second ``serve`` of the chat's app in
one process) replaces the route and the manager instead of stacking them.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import Guard
from api.base import TokenVerifier
from api.mcp.identity import TOKEN_KEY, Identity
from api.mcp.server import build_server
from api.problems import Problem, problem_response
from factory.operations import Operations
from factory.settings import Settings
from factory.tokens_pg import PostgresTokenStore

PATH = "/mcp"
_STATE = "factory_mcp"
_LOOPBACK = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)


class Authenticated:
    """ASGI: a request's bearer token verified and admitted, then left in the scope (see the module)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            client = scope.get("client")
            token = await self.guard.authenticate(
                Headers(scope=scope).get("authorization"), client=client[0] if client else None
            )
            self.guard.admit(token)
        except Problem as exc:
            refusal = problem_response(exc.status, exc.detail, kind=exc.kind, headers=exc.headers, **exc.extra)
            await refusal(scope, receive, send)
            return
        await self.app({**scope, TOKEN_KEY: token}, receive, send)


class _Transport:
    """ASGI: hand a request to the session manager (a class, so Starlette routes every method to it)."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)


@dataclass
class _Mounted:
    manager: StreamableHTTPSessionManager
    started: bool = False


def mcp_endpoint(
    ops: Operations, tokens: TokenVerifier, settings: Settings, *, host: str | None = None, guard: Guard | None = None
) -> tuple[ASGIApp, StreamableHTTPSessionManager]:
    """The authenticated ``/mcp`` endpoint on ``ops`` and the session manager whose ``run()`` it needs.
    ``guard``: the REST API's, so a token's rate is counted once across both."""
    guard = guard or Guard(tokens, rate_per_s=settings.api_rate_per_s, burst=settings.api_rate_burst)
    loopback = is_loopback(host or settings.api_host)
    server = build_server(
        ops,
        Identity(guard),
        max_body_bytes=settings.api_max_body_bytes,
        # DNS rebinding is a risk of a server on loopback; one listening on the network names no host
        transport_security=_LOOPBACK if loopback else None,
    )
    server.streamable_http_app()  # makes the session manager; its own app (routes, lifespan) is not used
    manager = server.session_manager
    return Authenticated(_Transport(manager), guard), manager


def mount_mcp(
    app: Any, ops: Operations, settings: Settings, *, host: str | None = None, guard: Guard | None = None
) -> None:
    """Serve the MCP server at ``/mcp`` of a Starlette app (``factory api``'s, or the chat's), before its
    own routes, and run its session manager in the app's lifespan (serve with ``lifespan="on"``).
    ``host``: the address the app listens on (default ``settings.api_host``)."""
    endpoint, manager = mcp_endpoint(ops, PostgresTokenStore(ops.factory.pool), settings, host=host, guard=guard)
    routes = app.router.routes
    routes[:] = [r for r in routes if not getattr(r, "_factory_mcp", False)]
    route = Route(PATH, endpoint=endpoint)
    route._factory_mcp = True  # type: ignore[attr-defined]  # found again by a later mount
    routes.insert(0, route)
    setattr(app.state, _STATE, _Mounted(manager))
    lifespan = app.router.lifespan_context
    if getattr(lifespan, "_factory_mcp", False):
        return  # this app's lifespan runs whichever manager is mounted when it starts

    @contextlib.asynccontextmanager
    async def with_mcp(app_: Any) -> AsyncIterator[Any]:
        mounted: _Mounted | None = getattr(app.state, _STATE, None)
        async with contextlib.AsyncExitStack() as stack:
            if mounted is not None and not mounted.started:
                mounted.started = True
                await stack.enter_async_context(mounted.manager.run())
            async with lifespan(app_) as state:
                yield state

    with_mcp._factory_mcp = True  # type: ignore[attr-defined]
    app.router.lifespan_context = with_mcp


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
