"""Who calls a tool, and may they: the caller's API token and its scope, by ``api.auth.Guard``'s rules.

Over stdio the process serves one token, ``FACTORY_TOKEN``; it is checked again (through the guard's
short cache) on every call, so a token revoked while an assistant holds the server stops working
within seconds. Over HTTP every request carries its own bearer token: the ``/mcp`` front door
(``api.mcp.http``) authenticates it and leaves the verified ``ApiToken`` in the request's ASGI scope
under ``TOKEN_KEY``, where a tool finds it through the MCP request context.

A refusal is the guard's ``Problem`` with the REST API's words (the scope a token has, the scope
needed, and ``factory tokens create NAME --scope ...``); ``api.mcp.errors`` turns it into a tool error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.fastmcp import FastMCP

from api.auth import Guard
from api.problems import Problem
from factory.tokens import ApiToken, Scope

#: Where the HTTP front door leaves a request's verified token in its ASGI scope.
TOKEN_KEY = "factory.api_token"


@dataclass(frozen=True)
class Identity:
    """The token behind each call: ``raw`` for every call (stdio), else each HTTP request's own."""

    guard: Guard
    raw: str | None = None

    async def token(self, request: Any | None) -> ApiToken:
        """The caller's token; ``Problem`` (401) if there is none, or it is unknown or revoked."""
        if self.raw is not None:
            return await self.guard.authenticate(f"Bearer {self.raw}")
        scope = getattr(request, "scope", None)
        found = scope.get(TOKEN_KEY) if isinstance(scope, Mapping) else None
        if not isinstance(found, ApiToken):
            raise Problem(
                401, "no token: send `Authorization: Bearer <token>` (create one with `factory tokens create`)"
            )
        return found

    async def require(self, request: Any | None, needed: Scope) -> ApiToken:
        """The caller's token if its scope allows ``needed``; else ``Problem`` (403) naming both scopes."""
        token = await self.token(request)
        self.guard.require(token, needed)
        return token


def current_request(server: FastMCP[Any]) -> Any | None:
    """The HTTP request that carries the call being served (a Starlette ``Request``); None over stdio."""
    try:
        return server.get_context().request_context.request
    except ValueError:  # outside any MCP request: nothing to find
        return None
