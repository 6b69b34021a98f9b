"""Runs, stages, artifacts and the usage ledger in PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from factory.errors import RunBusy
from routing.base import Spend, UsageRecord
from teams.base import Run, RunStatus, StageRecord, StoredArtifact
from teams.results import TaskResult

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_runs",
        """
        CREATE TABLE IF NOT EXISTS runs (
            id text PRIMARY KEY,
            requirement text NOT NULL,
            pipeline text[] NOT NULL,
            pipeline_name text NOT NULL,
            status text NOT NULL,
            artifacts_dir text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        );
        CREATE TABLE IF NOT EXISTS stages (
            run_id text NOT NULL REFERENCES runs(id),
            idx int NOT NULL,
            team text NOT NULL,
            status text NOT NULL,
            attempts int NOT NULL DEFAULT 0,
            clarifications int NOT NULL DEFAULT 0,
            tokens_in int NOT NULL DEFAULT 0,
            tokens_out int NOT NULL DEFAULT 0,
            cost_usd double precision NOT NULL DEFAULT 0,
            model text NOT NULL DEFAULT '',
            started_at timestamptz,
            finished_at timestamptz,
            result jsonb,
            PRIMARY KEY (run_id, idx)
        );
        CREATE TABLE IF NOT EXISTS artifacts (
            run_id text NOT NULL REFERENCES runs(id),
            stage_index int NOT NULL,
            team text NOT NULL,
            name text NOT NULL,
            kind text NOT NULL,
            sha256 text NOT NULL,
            bytes int NOT NULL,
            PRIMARY KEY (run_id, name)
        );
        CREATE TABLE IF NOT EXISTS usage_ledger (
            id bigserial PRIMARY KEY,
            run_id text,
            team text,
            alias text NOT NULL,
            model text NOT NULL,
            purpose text NOT NULL,
            tokens_in int NOT NULL,
            tokens_out int NOT NULL,
            cost_usd double precision NOT NULL,
            latency_ms double precision NOT NULL,
            ok boolean NOT NULL,
            error text,
            created_at timestamptz NOT NULL
        );
        CREATE INDEX IF NOT EXISTS usage_ledger_run ON usage_ledger (run_id, team);
        """,
    ),
    (
        "0002_run_revisions",
        """
        ALTER TABLE runs ADD COLUMN IF NOT EXISTS parent_run_id text REFERENCES runs(id);
        ALTER TABLE runs ADD COLUMN IF NOT EXISTS feedback text;
        """,
    ),
]

_STAGE_COLUMNS = (
    "run_id, idx, team, status, attempts, clarifications, tokens_in, tokens_out, cost_usd, model,"
    " started_at, finished_at, result"
)

_SAVE_STAGE = (
    f"INSERT INTO stages ({_STAGE_COLUMNS}) VALUES ({', '.join(['%s'] * 13)}) ON CONFLICT (run_id, idx) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _STAGE_COLUMNS.split(", ")[2:])
)
_INSERT_STAGE = f"INSERT INTO stages ({_STAGE_COLUMNS}) VALUES ({', '.join(['%s'] * 13)}) ON CONFLICT DO NOTHING"
_SAVE_ARTIFACT = (
    "INSERT INTO artifacts (run_id, stage_index, team, name, kind, sha256, bytes)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, name) DO UPDATE SET"
    " stage_index = EXCLUDED.stage_index, team = EXCLUDED.team, kind = EXCLUDED.kind,"
    " sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes"
)


async def _unlock_or_close(conn: AsyncConnection[Any], key: str) -> None:
    """Let go of the run's lock after a failed or cancelled drive; if that cannot be done for sure,
    close the connection (its session, and the lock, end with it) rather than pool it still locked."""
    try:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
            return
    except BaseException:
        pass
    with contextlib.suppress(Exception):
        await conn.close()


def _stage_row(stage: StageRecord) -> tuple[object, ...]:
    return (
        stage.run_id,
        stage.index,
        stage.team,
        stage.status.value,
        stage.attempts,
        stage.clarifications,
        stage.tokens_in,
        stage.tokens_out,
        stage.cost_usd,
        stage.model,
        stage.started_at,
        stage.finished_at,
        Jsonb(stage.result.model_dump(mode="json")) if stage.result else None,
    )


def _artifact_row(a: StoredArtifact) -> tuple[object, ...]:
    return (a.run_id, a.stage_index, a.team, a.name, a.kind, a.sha256, a.bytes)


class PostgresRunStore:
    """``RunStore`` and ``UsageLedger`` on a psycopg connection pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create_run(self, run: Run, stages: Sequence[StageRecord] = ()) -> None:
        row = (
            run.id,
            run.requirement,
            list(run.pipeline),
            run.pipeline_name,
            run.status.value,
            run.artifacts_dir,
            run.parent_run_id,
            run.feedback,
            run.created_at,
            run.updated_at,
        )
        # The run and its stages commit together, in one round trip.
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO runs (id, requirement, pipeline, pipeline_name, status, artifacts_dir,"
                " parent_run_id, feedback, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                row,
            )
            if stages:
                await cur.executemany(_INSERT_STAGE, [_stage_row(s) for s in stages])

    async def get_run(self, run_id: str) -> Run | None:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute("SELECT * FROM runs WHERE id = %s", (run_id,))
            row = await cur.fetchone()
        return Run.model_validate(row) if row else None

    async def set_run_status(self, run_id: str, status: RunStatus) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("UPDATE runs SET status = %s, updated_at = now() WHERE id = %s", (status.value, run_id))

    async def save_stage(self, stage: StageRecord, artifacts: Sequence[StoredArtifact] = ()) -> None:
        row = _stage_row(stage)
        async with self._pool.connection() as conn:
            if not artifacts:
                await conn.execute(_SAVE_STAGE, row)
                return
            # The stage and its artifacts commit together, in one round trip.
            async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                await cur.executemany(_SAVE_ARTIFACT, [_artifact_row(a) for a in artifacts])
                await cur.execute(_SAVE_STAGE, row)

    async def runs_with_status(
        self, statuses: Sequence[RunStatus], *, limit: int = 100, exclude: Sequence[str] = ()
    ) -> list[Run]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM runs WHERE status = ANY(%s) AND NOT id = ANY(%s) ORDER BY updated_at LIMIT %s",
                ([s.value for s in statuses], list(exclude), limit),
            )
            return [Run.model_validate(r) for r in await cur.fetchall()]

    @asynccontextmanager
    async def lease(self, run_id: str) -> AsyncIterator[None]:
        # A session advisory lock on a connection held for the block: it ends with the process.
        key = f"factory.run:{run_id}"
        async with self._pool.connection() as conn:
            released = False  # whether this session surely holds no lock of the run
            try:
                cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,))
                row = await cur.fetchone()
                if not (row and row[0]):
                    released = True
                    raise RunBusy(
                        f"run {run_id} is being driven by another process (a `factory run`, `resume` or"
                        " `worker`); wait for it, or stop that process and try again"
                    )
                yield
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
                released = True
            finally:
                if not released:
                    await _unlock_or_close(conn, key)

    async def stages(self, run_id: str) -> list[StageRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_STAGE_COLUMNS} FROM stages WHERE run_id = %s ORDER BY idx", (run_id,)
            )
            rows = await cur.fetchall()
        records = []
        for row in rows:
            row["index"] = row.pop("idx")
            raw = row.pop("result")
            records.append(StageRecord(**row, result=TaskResult.model_validate(raw) if raw else None))
        return records

    async def save_artifacts(self, artifacts: Sequence[StoredArtifact]) -> None:
        if not artifacts:
            return
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(_SAVE_ARTIFACT, [_artifact_row(a) for a in artifacts])

    async def artifacts(self, run_id: str) -> list[StoredArtifact]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM artifacts WHERE run_id = %s ORDER BY stage_index, name", (run_id,)
            )
            return [StoredArtifact.model_validate(r) for r in await cur.fetchall()]

    async def record(self, usage: UsageRecord) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO usage_ledger (run_id, team, alias, model, purpose, tokens_in, tokens_out,"
                " cost_usd, latency_ms, ok, error, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    usage.run_id,
                    usage.team,
                    usage.alias,
                    usage.model,
                    usage.purpose,
                    usage.tokens_in,
                    usage.tokens_out,
                    usage.cost_usd,
                    usage.latency_ms,
                    usage.ok,
                    usage.error,
                    usage.created_at,
                ),
            )

    async def spent(self, run_id: str, team: str | None = None) -> Spend:
        where = "run_id = %s" + (" AND team = %s" if team else "")
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT coalesce(sum(tokens_in + tokens_out), 0), coalesce(sum(cost_usd), 0) FROM usage_ledger"
                f" WHERE {where}",
                (run_id, team) if team else (run_id,),
            )
            row = await cur.fetchone()
        return Spend(tokens=int(row[0]), cost_usd=float(row[1])) if row else Spend()

    async def usage(self, run_id: str) -> list[UsageRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM usage_ledger WHERE run_id = %s ORDER BY id", (run_id,)
            )
            return [UsageRecord.model_validate(r) for r in await cur.fetchall()]
