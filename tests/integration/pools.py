"""A connection pool on a test database the factory's migrations have run on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool

from factory.migrations import migrate


@asynccontextmanager
async def migrated_pool(url: str, *, max_size: int = 2) -> AsyncIterator[AsyncConnectionPool]:
    """Every migration applied to ``url``, then an open autocommit pool on it (closed at the end)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
    pool = AsyncConnectionPool(url, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()
