"""``factory mcp``: the MCP server over stdio, for an assistant that starts it as a subprocess.

Standard output carries the protocol and nothing else: before anything starts, the process's
standard output (file descriptor 1) is moved aside for the protocol alone and descriptor 1 is pointed
at standard error. A stray ``print``, a library's banner or a child process (an embedded service)
then writes to standard error, never into a JSON-RPC line.

The token comes from ``FACTORY_TOKEN`` and is checked before the server answers anything: unknown or
revoked is ``TokenNotFound`` (``factory`` exits 2 with one line on standard error). Runs this server
submits or decides are continued by a worker when one is alive, else by this process for as long as
it runs (``Operations``); a run left waiting when it exits is resumed by a worker or ``factory resume``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any

import anyio
from mcp.server.stdio import stdio_server

from api.auth import Guard
from api.mcp.identity import Identity
from api.mcp.server import build_server
from factory.errors import TokenNotFound
from factory.operations import Operations, operating
from factory.settings import Settings
from factory.tokens import well_formed
from factory.tokens_pg import PostgresTokenStore
from factory.wiring import Factory, open_factory, responders_for_run

TOKEN_ENV = "FACTORY_TOKEN"
HOW = "create one with `factory tokens create NAME --scope operator` and set FACTORY_TOKEN to it"


def token_from_env(environ: dict[str, str] | os._Environ[str]) -> str:
    """The raw token in ``FACTORY_TOKEN``; ``TokenNotFound`` (exit 2) saying what to do if absent or malformed."""
    raw = environ.get(TOKEN_ENV, "").strip()
    if not raw:
        raise TokenNotFound(f"{TOKEN_ENV} is not set: the MCP server acts with an API token; {HOW}")
    if not well_formed(raw):
        raise TokenNotFound(f"{TOKEN_ENV} is not a factory token (fct_ and 43 characters); {HOW}")
    return raw


@contextlib.contextmanager
def protocol_stdout() -> Iterator[io.TextIOWrapper]:
    """The real standard output, for the protocol only, while descriptor 1 goes to standard error."""
    sys.stdout.flush()
    protocol = os.dup(1)
    saved = os.dup(1)
    os.dup2(2, 1)
    stream = io.TextIOWrapper(os.fdopen(protocol, "wb"), encoding="utf-8", newline="\n")
    try:
        yield stream
    finally:
        with contextlib.suppress(OSError, ValueError):
            stream.close()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


async def serve_stdio(settings: Settings, raw_token: str, *, factory: Factory | None = None) -> None:
    """Serve MCP on stdio with ``raw_token``'s rights until the client closes standard input."""
    with protocol_stdout() as out:
        async with _factory(settings, factory) as f, operating(f) as ops:
            await _serve(ops, raw_token, out)


async def _serve(ops: Operations, raw_token: str, out: io.TextIOWrapper) -> None:
    tokens = PostgresTokenStore(ops.factory.pool)
    if await tokens.verify(raw_token) is None:
        raise TokenNotFound(f"the token in {TOKEN_ENV} is unknown or revoked (see `factory tokens list`); {HOW}")
    server = build_server(ops, Identity(Guard(tokens), raw=raw_token))
    lowlevel = server._mcp_server  # FastMCP serves stdio only on sys.stdout, which is standard error here
    async with stdio_server(stdout=anyio.wrap_file(out)) as (read, write):
        await lowlevel.run(read, write, lowlevel.create_initialization_options())


@contextlib.asynccontextmanager
async def _factory(settings: Settings, given: Factory | None) -> Any:
    if given is not None:
        yield given
        return
    async with open_factory(settings, serve=responders_for_run(settings)) as factory:
        yield factory
