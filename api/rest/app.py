"""The REST API (``/api/v1``): the factory's operations over HTTP, for tools and dashboards.

``create_app`` builds a FastAPI app on an ``Operations`` (the same services the CLI and the chat
call, DESIGN §13) and a token verifier. Its routes live under ``/v1``; whoever serves it mounts it at
``/api`` (``factory api`` alone, ``factory up`` beside the chat), so every URL is ``/api/v1/...`` and
the OpenAPI document is ``/api/v1/openapi.json``. Every request but ``/api/v1/health`` carries a
bearer token (``api.auth``); bodies over the limit are refused before they are read
(``api.limits``); every error is an RFC 9457 problem (``api.problems``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import HTTPBearer

from api import problems
from api.auth import Guard
from api.base import TokenVerifier
from api.limits import BodyLimit
from factory.operations import Operations
from factory.settings import Settings
from factory.tokens import ApiToken, Scope

PREFIX = "/v1"
MOUNT = "/api"
_bearer = HTTPBearer(auto_error=False, description="A token from `factory tokens create NAME --scope ...`.")


@dataclass(frozen=True)
class ApiState:
    """What every route reaches through ``request.app.state.api``."""

    ops: Operations
    guard: Guard
    settings: Settings
    #: The attention list last rendered, per limit: (the list it was made from, its JSON).
    rendered: dict[int, tuple[Any, bytes]] = field(default_factory=dict)


def state(request: Request) -> ApiState:
    api: ApiState = request.app.state.api
    return api


def needs(scope: Scope) -> Callable[..., Awaitable[ApiToken]]:
    """A dependency: the request's token, authenticated, within its rate and allowed ``scope``."""

    async def token(request: Request, _: Annotated[Any, Security(_bearer)] = None) -> ApiToken:
        guard = state(request).guard
        client = request.client.host if request.client else None
        found = await guard.authenticate(request.headers.get("authorization"), client=client)
        guard.admit(found)
        guard.require(found, scope)
        return found

    token.__name__ = f"needs_{scope.value}"
    return token


Viewer = Annotated[ApiToken, Depends(needs(Scope.VIEWER))]
Operator = Annotated[ApiToken, Depends(needs(Scope.OPERATOR))]
Admin = Annotated[ApiToken, Depends(needs(Scope.ADMIN))]
State = Annotated[ApiState, Depends(state)]


def guard_for(tokens: TokenVerifier, settings: Settings) -> Guard:
    """One process's authentication and rate limits (share it between the REST API and MCP)."""
    return Guard(tokens, rate_per_s=settings.api_rate_per_s, burst=settings.api_rate_burst)


def create_app(ops: Operations, guard: Guard, settings: Settings) -> FastAPI:
    """The API app on ``ops``; serve it mounted at ``/api`` (see the module docstring)."""
    from api.rest import escalations, events, reads, runs, webhooks
    from api.rest.events import Streams

    app = FastAPI(
        title="AI Software Factory API",
        version="1",
        summary="Submit runs, follow them live, decide what waits on a human, read usage and the audit.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,  # its page loads scripts from a CDN: the OpenAPI document is what is served
        redoc_url=None,
    )
    app.state.api = ApiState(ops=ops, guard=guard, settings=settings)
    app.state.streams = Streams(settings.api_sse_per_token, settings.api_sse_total)
    problems.install(app)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)

    @app.get(f"{PREFIX}/health", tags=["meta"], summary="Liveness: no token needed.")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    for module in (runs, events, escalations, reads, webhooks):
        app.include_router(module.router, prefix=PREFIX)
    return app
