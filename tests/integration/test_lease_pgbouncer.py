"""The run lease through a real PgBouncer in transaction mode (issue 13, item 1).

There, consecutive transactions of one client may run on different server connections, so no
session state (an advisory lock) survives between them. The lease keeps nothing in a session: it is
a row, taken, renewed and checked by single transactions, so it holds through the pooler too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.errors import LeaseLost, RunBusy
from factory.migrations import migrate
from teams.base import Run, RunStatus, StageRecord, StageStatus
from teams.store_pg import PostgresRunStore
from tests.integration.pgbouncer import PgBouncer

pytestmark = pytest.mark.integration


@pytest.fixture
async def bounced(pgbouncer: PgBouncer, pg_url: str) -> AsyncIterator[tuple[AsyncConnectionPool, AsyncConnectionPool]]:
    """Two pools (two processes, as it were) reaching the test's database through PgBouncer."""
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        await migrate(conn)
    # PgBouncer 1.18 in transaction mode keeps no server-side prepared statement for a client.
    kwargs = {"autocommit": True, "prepare_threshold": None}
    url = pgbouncer.url(pg_url)
    async with (
        AsyncConnectionPool(url, min_size=2, max_size=2, kwargs=kwargs) as first,
        AsyncConnectionPool(url, min_size=2, max_size=2, kwargs=kwargs) as second,
    ):
        yield first, second


async def _server_pids(pool: AsyncConnectionPool, times: int) -> set[int]:
    pids = set()
    for _ in range(times):
        async with pool.connection() as conn:
            row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            assert row is not None
            pids.add(row[0])
    return pids


async def test_the_lease_holds_and_fences_through_pgbouncer(
    bounced: tuple[AsyncConnectionPool, AsyncConnectionPool], pg_url: str
) -> None:
    pool_a, pool_b = bounced
    a, b = PostgresRunStore(pool_a, lease_ttl_s=1.0), PostgresRunStore(pool_b, lease_ttl_s=1.0)
    now = datetime.now(UTC)
    run = Run(id="run-1", requirement="r", pipeline=["qa-engineering"], pipeline_name="custom", created_at=now,
              updated_at=now)  # fmt: skip
    stage = StageRecord(run_id=run.id, index=0, team="qa-engineering")
    async with a.lease(run.id) as first:
        await a.create_run(run, [stage], lease=first)
        await asyncio.sleep(2.5)  # past the lease's lifetime: only its renewals keep it, through the pooler
        with pytest.raises(RunBusy):
            async with b.lease(run.id):
                pass
        for attempt in range(1, 8):  # more than psycopg's prepare threshold of writes, all fenced
            await a.save_stage(stage.model_copy(update={"attempts": attempt}), lease=first)
        # Both "processes" ran on one server session: a session lock (the old lease) would be held by
        # both, as the same session's lock is granted again; the row lease told them apart.
        assert await _server_pids(pool_a, 6) & await _server_pids(pool_b, 6)

        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:  # A stalls, it lapses
            await conn.execute("UPDATE run_leases SET expires_at = now() - interval '1 s' WHERE run_id = %s", (run.id,))
        async with b.lease(run.id) as second:
            assert second.token == first.token + 1
            with pytest.raises(LeaseLost):
                await a.save_stage(stage.model_copy(update={"status": StageStatus.FAILED}), lease=first)
            with pytest.raises(LeaseLost):
                await a.set_run_status(run.id, RunStatus.FAILED, lease=first)
            await b.save_stage(stage.model_copy(update={"status": StageStatus.COMPLETE, "attempts": 8}), lease=second)
            await b.set_run_status(run.id, RunStatus.COMPLETE, lease=second)
    [saved] = await a.stages(run.id)
    got = await a.get_run(run.id)
    assert (saved.status, saved.attempts) == (StageStatus.COMPLETE, 8) and got is not None
    assert got.status is RunStatus.COMPLETE
    async with a.lease(run.id):  # let go: the next driver takes it at once
        pass
