"""The ``/mcp`` front door in process: bearer tokens (the in-memory token store), scopes reaching the tools,
the stdio identity's re-check, and mounting beside another app (twice, as a second ``serve`` does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent
from starlette.applications import Starlette
from starlette.routing import Route

from api.auth import Guard
from api.mcp.http import PATH, is_loopback, mcp_endpoint, mount_mcp
from api.mcp.identity import Identity
from api.problems import Problem
from factory.operations import Operations
from factory.settings import Settings
from factory.tokens import InMemoryTokenStore, Scope
from hitl.attention import Attention, attention
from hitl.sla import SlaPolicy

BASE = "http://127.0.0.1:8100"


class _Ops:
    """Only what the tools used here call."""

    async def attention(self) -> Attention:
        return attention([], SlaPolicy(), datetime.now(UTC))


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def front_door(store: InMemoryTokenStore, **values: Any) -> AsyncIterator[Starlette]:
    endpoint, manager = mcp_endpoint(cast(Operations, _Ops()), store, settings(**values), host="127.0.0.1")
    app = Starlette(routes=[Route(PATH, endpoint=endpoint)])
    async with manager.run():
        yield app


@asynccontextmanager
async def session(app: Starlette, token: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers) as http:
        async with streamable_http_client(f"{BASE}{PATH}", http_client=http) as (read, write, _):
            async with ClientSession(read, write) as client:
                await client.initialize()
                yield client


async def test_each_request_is_authenticated_and_its_token_reaches_the_tools() -> None:
    store = InMemoryTokenStore()
    _, viewer = await store.create("dash", "viewer")
    async with front_door(store) as app:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as raw:
            anonymous = await raw.post(PATH, json={})
            assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
            assert "factory tokens create" in anonymous.json()["detail"]
            basic = await raw.post(PATH, json={}, headers={"Authorization": "Basic YTpi"})
            assert "must be `Bearer <token>`" in basic.json()["detail"]
            rebound = await raw.post(PATH, json={}, headers={"Authorization": f"Bearer {viewer}", "Host": "evil.test"})
            assert rebound.status_code == 421  # DNS rebinding: a loopback server answers loopback names only
        async with session(app, viewer) as client:
            needs = await client.call_tool("factory_what_needs_me", {})
            assert not needs.isError and needs.structuredContent is not None
            assert needs.structuredContent["headline"] == "nothing needs you"
            denied = await client.call_tool("factory_approve", {"escalation_id": "esc-1"})
            assert denied.isError
            assert isinstance(denied.content[0], TextContent)
            assert denied.content[0].text == (
                "token 'dash' has the viewer scope; this needs operator"
                " (create one with `factory tokens create NAME --scope operator`)"
            )


async def test_a_token_over_its_rate_is_refused_with_when_to_retry() -> None:
    store = InMemoryTokenStore()
    _, raw_token = await store.create("greedy", "viewer")
    async with front_door(store, api_rate_per_s=0.5, api_rate_burst=2) as app:
        headers = {"Authorization": f"Bearer {raw_token}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers) as raw:
            codes = [(await raw.post(PATH, json={})).status_code for _ in range(3)]
            limited = await raw.post(PATH, json={})
    assert 429 not in codes[:2] and codes[2] == 429 and limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1 and "over its rate limit" in limited.json()["detail"]


async def test_over_stdio_the_one_token_is_checked_again_so_a_revoked_one_stops() -> None:
    store = InMemoryTokenStore()
    _, raw = await store.create("desk", "operator")
    identity = Identity(Guard(store, cache_s=0.0), raw=raw)
    assert (await identity.require(None, Scope.OPERATOR)).name == "desk"
    with pytest.raises(Problem, match="this needs admin"):
        await identity.require(None, Scope.ADMIN)
    await store.revoke("desk")
    with pytest.raises(Problem, match="unknown or revoked"):
        await identity.require(None, Scope.VIEWER)
    with pytest.raises(Problem, match="no token"):  # over HTTP, a request the front door did not authenticate
        await Identity(Guard(store)).require(SimpleNamespace(scope={}), Scope.VIEWER)


async def test_mounting_again_replaces_the_route_and_each_lifespan_runs_the_mounted_manager() -> None:
    app = Starlette(routes=[Route("/other", endpoint=lambda request: None)])
    ops = cast(Operations, SimpleNamespace(factory=SimpleNamespace(pool=None)))
    for _ in range(2):  # as two serve() of one process's app (the chat's is a module-level app)
        mount_mcp(app, ops, settings())
        assert [getattr(r, "path", None) for r in app.router.routes] == [PATH, "/other"]
        async with app.router.lifespan_context(app):
            mounted = app.state.factory_mcp
            assert mounted.started  # its manager runs: requests are served
        with pytest.raises(RuntimeError, match="only be called once"):  # and it was the one that ran
            async with mounted.manager.run():
                pass


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "example.com", "::"))
