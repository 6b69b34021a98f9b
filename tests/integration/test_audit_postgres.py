"""The audit is immutable in the database itself, and tampering is detected."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.migrations import migrate
from memory.audit_pg import PostgresAuditLog

pytestmark = pytest.mark.integration


async def _log(url: str) -> tuple[AsyncConnectionPool, PostgresAuditLog]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
    await pool.open()
    log = PostgresAuditLog(pool)
    for i in range(4):
        await log.append("run-x", f"k{i}", "step", {"i": i})
    return pool, log


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_entries SET payload = '{}'", "DELETE FROM audit_entries", "TRUNCATE audit_entries"]
)
async def test_update_delete_truncate_are_refused_by_the_database(pg_url: str, statement: str) -> None:
    pool, log = await _log(pg_url)
    async with pool:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            async with pool.connection() as conn:
                await conn.execute(statement)
        assert (await log.verify("run-x")).intact


def _tamper(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
        conn.execute(statement)
        conn.execute("ALTER TABLE audit_entries ENABLE TRIGGER USER")


@pytest.mark.parametrize(
    ("statement", "needle"),
    [
        ("UPDATE audit_entries SET payload = '{\"i\":99}' WHERE seq = 1", "altered"),
        ("DELETE FROM audit_entries WHERE seq = 2", "removed or reordered"),
        ("DELETE FROM audit_entries WHERE seq = 3", "removed or added"),
        (
            "UPDATE audit_entries SET seq = -1 WHERE seq = 1;"
            " UPDATE audit_entries SET seq = 1 WHERE seq = 2;"
            " UPDATE audit_entries SET seq = 2 WHERE seq = -1",
            "does not link",
        ),
    ],
)
async def test_altered_removed_or_reordered_entries_are_detected(pg_url: str, statement: str, needle: str) -> None:
    pool, log = await _log(pg_url)
    async with pool:
        _tamper(pg_url, statement)
        report = await log.verify("run-x")
        assert not report.intact
        assert any(needle in p for p in report.problems), report.problems


@pytest.mark.parametrize("store", ["postgres", "memory"])
async def test_search_finds_entries_of_past_runs_best_first(pg_url: str, store: str) -> None:
    from memory.audit_memory import InMemoryAuditLog

    pool = None
    if store == "postgres":
        pool, log = await _log(pg_url)
        audit: PostgresAuditLog | InMemoryAuditLog = log
    else:
        audit = InMemoryAuditLog()
    try:
        await audit.append("run-a", "snap", "run.snapshot", {"requirement": "URL shortener with click counts"})
        await audit.append("run-b", "snap", "run.snapshot", {"requirement": "Payroll export to CSV"})
        await audit.append(
            "run-b", "q1", "clarification", {"question": "Which CSV delimiter for the payroll export?", "answer": ";"}
        )
        hits = await audit.search("payroll csv")
        assert {h.run_id for h in hits} == {"run-b"} and len(hits) == 2
        assert all("payroll" in h.excerpt.lower() for h in hits)
        assert [h.run_id for h in await audit.search("shortener")] == ["run-a"]
        assert await audit.search("nothing-like-this") == [] and await audit.search("   ") == []
    finally:
        if pool is not None:
            await pool.close()
