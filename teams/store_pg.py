"""Runs, stages, artifacts and the usage ledger in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from factory.errors import LeaseLost
from routing.base import Spend, UsageRecord
from teams.base import RENEWAL_REFUSED, TAKEN_OVER, Run, RunStatus, StageRecord, StoredArtifact
from teams.lease import Lease, busy, lost_message, new_owner, owner_is_dead
from teams.results import TaskResult

log = logging.getLogger(__name__)

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
    (
        "0003_run_leases",
        """
        -- One driver per run (teams/lease.py): the owner and a fencing token that only grows.
        CREATE TABLE IF NOT EXISTS run_leases (
            run_id text PRIMARY KEY,
            owner text NOT NULL,
            token bigint NOT NULL,
            expires_at timestamptz NOT NULL
        );
        -- Called first in every transaction that writes a run's state: refuses it (SQLSTATE FL001)
        -- unless the lease still holds the run, and keeps it from being taken over until commit.
        CREATE OR REPLACE FUNCTION run_lease_held(p_run text, p_owner text, p_token bigint)
        RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM 1 FROM run_leases
                WHERE run_id = p_run AND owner = p_owner AND token = p_token AND expires_at > now()
                FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'run % is no longer held by %', p_run, p_owner USING ERRCODE = 'FL001';
            END IF;
        END $$;
        """,
    ),
    (
        "0004_run_lease_held_by_token",
        """
        -- Owner and token fence a write (a takeover always raises the token, under FOR SHARE it
        -- waits for the write's commit); expiry only lets another process take the run. A driver
        -- whose lease lapsed while nobody took it (the database restarted, the host slept) goes on.
        CREATE OR REPLACE FUNCTION run_lease_held(p_run text, p_owner text, p_token bigint)
        RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM 1 FROM run_leases WHERE run_id = p_run AND owner = p_owner AND token = p_token FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'run % is no longer held by %', p_run, p_owner USING ERRCODE = 'FL001';
            END IF;
        END $$;
        """,
    ),
    (
        "0005_run_routing_and_fallbacks",
        """
        -- The routing a run started with (models, bases, key references: no secret), and each
        -- model call's fallbacks (deployments that failed before the one that answered).
        ALTER TABLE runs ADD COLUMN IF NOT EXISTS routing jsonb;
        ALTER TABLE usage_ledger ADD COLUMN IF NOT EXISTS fallbacks jsonb NOT NULL DEFAULT '[]';
        CREATE INDEX IF NOT EXISTS usage_ledger_created ON usage_ledger (created_at);
        """,
    ),
    (
        "0006_run_policy",
        """
        -- The run policy a run started with (gate limits, budgets, clarification limits).
        ALTER TABLE runs ADD COLUMN IF NOT EXISTS policy jsonb;
        """,
    ),
    (
        "0007_stage_checks",
        """
        -- The verification gate's figures for a stage's latest result (issue 19).
        ALTER TABLE stages ADD COLUMN IF NOT EXISTS checks jsonb;
        """,
    ),
    (
        "0008_run_queue_index",
        """
        -- The run queue (claim, runs held by the dead) reads the movable runs oldest first: through
        -- this index it touches only them, not every run ever made (a sequential scan of the whole
        -- table at each claim, which grew with the factory's history).
        CREATE INDEX IF NOT EXISTS runs_status_updated ON runs (status, updated_at);
        """,
    ),
]

LEASE_LOST = "FL001"  # the SQLSTATE run_lease_held raises
_HELD = "SELECT run_lease_held(%s, %s, %s)"
_TAKE = (
    "INSERT INTO run_leases AS l (run_id, owner, token, expires_at)"
    " VALUES (%(run)s, %(owner)s, 1, now() + make_interval(secs => %(ttl)s))"
    " ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at"
    " WHERE l.expires_at <= now() OR l.owner = %(dead)s RETURNING token"
)
# An operator's cancel: the lease is taken whoever holds it (no expiry condition). A fenced write
# under way holds the row FOR SHARE, so it commits first; every later write of the old holder is refused.
_SEIZE = (
    "INSERT INTO run_leases AS l (run_id, owner, token, expires_at)"
    " VALUES (%(run)s, %(owner)s, 1, now() + make_interval(secs => %(ttl)s))"
    " ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at"
    " RETURNING token"
)
_CLAIM = (
    "WITH next AS ("
    " SELECT r.id FROM runs r LEFT JOIN run_leases l ON l.run_id = r.id"
    " WHERE r.status = ANY(%(statuses)s) AND NOT r.id = ANY(%(exclude)s)"
    " AND (l.run_id IS NULL OR l.expires_at <= now())"
    " ORDER BY r.updated_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED)"
    " INSERT INTO run_leases AS l (run_id, owner, token, expires_at)"
    " SELECT id, %(owner)s, 1, now() + make_interval(secs => %(ttl)s) FROM next"
    " ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at"
    " WHERE l.expires_at <= now() RETURNING run_id, token"
)
_RENEW = (
    "UPDATE run_leases SET expires_at = now() + make_interval(secs => %s)"
    " WHERE run_id = %s AND owner = %s AND token = %s RETURNING 1"
)
_RELEASE = "UPDATE run_leases SET expires_at = now() WHERE run_id = %s AND owner = %s AND token = %s"

_STAGE_COLUMNS = (
    "run_id, idx, team, status, attempts, clarifications, tokens_in, tokens_out, cost_usd, model,"
    " started_at, finished_at, result, checks"
)

_SAVE_STAGE = (
    f"INSERT INTO stages ({_STAGE_COLUMNS}) VALUES ({', '.join(['%s'] * 14)}) ON CONFLICT (run_id, idx) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _STAGE_COLUMNS.split(", ")[2:])
)
# The same, in one statement with the lease's check: it runs first, and a refusal fails the statement.
_SAVE_STAGE_HELD = (
    f"INSERT INTO stages ({_STAGE_COLUMNS}) SELECT {', '.join(['%s'] * 14)} FROM run_lease_held(%s, %s, %s)"
    " ON CONFLICT (run_id, idx) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _STAGE_COLUMNS.split(", ")[2:])
)
_SET_STATUS_HELD = "UPDATE runs SET status = %s, updated_at = now() FROM run_lease_held(%s, %s, %s) WHERE id = %s"
_INSERT_STAGE = f"INSERT INTO stages ({_STAGE_COLUMNS}) VALUES ({', '.join(['%s'] * 14)}) ON CONFLICT DO NOTHING"
_SAVE_ARTIFACT = (
    "INSERT INTO artifacts (run_id, stage_index, team, name, kind, sha256, bytes)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, name) DO UPDATE SET"
    " stage_index = EXCLUDED.stage_index, team = EXCLUDED.team, kind = EXCLUDED.kind,"
    " sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes"
)


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
        Jsonb(stage.checks) if stage.checks is not None else None,
    )


def _artifact_row(a: StoredArtifact) -> tuple[object, ...]:
    return (a.run_id, a.stage_index, a.team, a.name, a.kind, a.sha256, a.bytes)


class PostgresRunStore:
    """``RunStore`` and ``UsageLedger`` on a psycopg connection pool."""

    def __init__(self, pool: AsyncConnectionPool, *, lease_ttl_s: float = 30.0) -> None:
        self._pool = pool
        self._lease_ttl_s = lease_ttl_s

    @asynccontextmanager
    async def _fenced(self, lease: Lease) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor in one transaction (one round trip: pipelined) that commits only if ``lease``
        still holds its run, checked first in that same transaction."""
        lease.check()
        with self._refused_as_lost(lease):
            async with self._pool.connection() as conn, conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                await cur.execute(_HELD, (lease.run_id, lease.owner, lease.token))
                yield cur

    async def _held_statement(self, lease: Lease, sql: str, params: tuple[object, ...]) -> None:
        """One statement whose ``run_lease_held(run, owner, token)`` (its last three parameters) is
        checked in its own implicit transaction: the common writes cost one statement, no BEGIN."""
        lease.check()
        with self._refused_as_lost(lease):
            async with self._pool.connection() as conn:
                await conn.execute(sql, params)

    @staticmethod
    @contextlib.contextmanager
    def _refused_as_lost(lease: Lease) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            if exc.sqlstate != LEASE_LOST:
                raise
            lease.lost = TAKEN_OVER
            raise LeaseLost(lost_message(lease.run_id, lease.lost)) from exc

    async def create_run(self, run: Run, stages: Sequence[StageRecord] = (), *, lease: Lease) -> None:
        row = (
            run.id,
            run.requirement,
            list(run.pipeline),
            run.pipeline_name,
            run.status.value,
            run.artifacts_dir,
            run.parent_run_id,
            run.feedback,
            Jsonb(run.routing) if run.routing is not None else None,
            Jsonb(run.policy) if run.policy is not None else None,
            run.created_at,
            run.updated_at,
        )
        # The run and its stages commit together, in one round trip.
        async with self._fenced(lease) as cur:
            await cur.execute(
                "INSERT INTO runs (id, requirement, pipeline, pipeline_name, status, artifacts_dir,"
                " parent_run_id, feedback, routing, policy, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
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

    async def set_run_status(
        self, run_id: str, status: RunStatus, *, lease: Lease, stages: Sequence[StageRecord] = ()
    ) -> None:
        held = (lease.run_id, lease.owner, lease.token)
        if not stages:
            await self._held_statement(lease, _SET_STATUS_HELD, (status.value, *held, run_id))
            return
        async with self._fenced(lease) as cur:  # the stages and the status commit together
            await cur.executemany(_SAVE_STAGE, [_stage_row(s) for s in stages])
            await cur.execute("UPDATE runs SET status = %s, updated_at = now() WHERE id = %s", (status.value, run_id))

    async def save_stage(self, stage: StageRecord, artifacts: Sequence[StoredArtifact] = (), *, lease: Lease) -> None:
        if not artifacts:
            await self._held_statement(
                lease, _SAVE_STAGE_HELD, (*_stage_row(stage), lease.run_id, lease.owner, lease.token)
            )
            return
        # The stage and its artifacts commit together, in one round trip.
        async with self._fenced(lease) as cur:
            await cur.executemany(_SAVE_ARTIFACT, [_artifact_row(a) for a in artifacts])
            await cur.execute(_SAVE_STAGE, _stage_row(stage))

    async def runs_with_status(
        self, statuses: Sequence[RunStatus], *, limit: int = 100, exclude: Sequence[str] = ()
    ) -> list[Run]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM runs WHERE status = ANY(%s) AND NOT id = ANY(%s) ORDER BY updated_at LIMIT %s",
                ([s.value for s in statuses], list(exclude), limit),
            )
            return [Run.model_validate(r) for r in await cur.fetchall()]

    async def recent_runs(self, *, limit: int = 10) -> list[Run]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM runs ORDER BY created_at DESC LIMIT %s", (limit,)
            )
            return [Run.model_validate(r) for r in await cur.fetchall()]

    async def page_runs(
        self, *, statuses: Sequence[RunStatus] = (), limit: int = 20, before: tuple[datetime, str] | None = None
    ) -> list[Run]:
        """Runs newest first (created_at, then id), only in ``statuses`` (all when empty), after
        ``before`` in that order (the (created_at, id) of a page's last run: the next page)."""
        at, last = before if before is not None else (None, "")
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM runs WHERE (cardinality(%(statuses)s::text[]) = 0 OR status = ANY(%(statuses)s))"
                " AND (%(at)s::timestamptz IS NULL OR (created_at, id) < (%(at)s, %(last)s))"
                " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
                {"statuses": [s.value for s in statuses], "at": at, "last": last, "limit": limit},
            )
            return [Run.model_validate(r) for r in await cur.fetchall()]

    @asynccontextmanager
    async def lease(self, run_id: str) -> AsyncIterator[Lease]:
        async with self.holding(await self._take(run_id)) as lease:
            yield lease

    async def claim(self, statuses: Sequence[RunStatus], *, exclude: Sequence[str] = ()) -> Lease | None:
        """The run queue (DESIGN §13): take the lease of the oldest run in ``statuses`` that nobody holds
        (None: there is none), in one statement. ``FOR UPDATE SKIP LOCKED`` lets any number of workers
        claim at once without waiting on each other or taking the same run; the lease row is the claim,
        so it works through a transaction-mode pooler. Hold the lease with ``holding``."""
        started = time.monotonic()
        owner = new_owner()
        params = {
            "statuses": [s.value for s in statuses], "exclude": list(exclude), "owner": owner,
            "ttl": self._lease_ttl_s,
        }  # fmt: skip
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_CLAIM, params)).fetchone()
        if row is None:
            return None
        return Lease(run_id=row[0], owner=owner, token=int(row[1]), held_until=started + self._lease_ttl_s)

    async def held_by_the_dead(self, statuses: Sequence[RunStatus], *, limit: int = 20) -> list[str]:
        """Runs in ``statuses`` whose unexpired lease belongs to a process of this host that is gone
        (``lease`` takes them over at once, not after the lease's lifetime)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT r.id, l.owner FROM runs r JOIN run_leases l ON l.run_id = r.id"
                " WHERE r.status = ANY(%s) AND l.expires_at > now() ORDER BY r.updated_at LIMIT %s",
                ([s.value for s in statuses], limit),
            )
            return [run_id for run_id, owner in await cur.fetchall() if owner_is_dead(owner)]

    @asynccontextmanager
    async def holding(self, lease: Lease) -> AsyncIterator[Lease]:
        """Keep ``lease`` renewed while the block runs; let it go at the end."""
        heartbeat = asyncio.create_task(self._heartbeat(lease), name=f"lease {lease.run_id}")
        try:
            yield lease
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            if lease.lost is None:  # let go at once; if that fails, the lease simply expires
                with contextlib.suppress(psycopg.Error, OSError):
                    async with self._pool.connection() as conn:
                        await conn.execute(_RELEASE, (lease.run_id, lease.owner, lease.token))

    async def seize(self, run_id: str) -> Lease:
        started = time.monotonic()
        owner = new_owner()
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(_SEIZE, {"run": run_id, "owner": owner, "ttl": self._lease_ttl_s})
            ).fetchone()
        assert row is not None  # inserted or updated: the statement has no condition
        return Lease(run_id=run_id, owner=owner, token=int(row[0]), held_until=started + self._lease_ttl_s)

    async def _take(self, run_id: str) -> Lease:
        started = time.monotonic()
        owner = new_owner()
        params = {"run": run_id, "owner": owner, "ttl": self._lease_ttl_s, "dead": None}
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_TAKE, params)).fetchone()
            if row is None:  # held: by a process of this host that is gone, its lease goes now
                cur = await conn.execute("SELECT owner FROM run_leases WHERE run_id = %s", (run_id,))
                holder = await cur.fetchone()
                if holder is not None and owner_is_dead(holder[0]):
                    row = await (await conn.execute(_TAKE, {**params, "dead": holder[0]})).fetchone()
        if row is None:
            raise busy(run_id)
        return Lease(run_id=run_id, owner=owner, token=int(row[0]), held_until=started + self._lease_ttl_s)

    async def renew(self, lease: Lease) -> None:
        lease.check()
        started = time.monotonic()
        async with self._pool.connection() as conn:
            cur = await conn.execute(_RENEW, (self._lease_ttl_s, lease.run_id, lease.owner, lease.token))
            renewed = await cur.fetchone()
        if renewed is None:
            lease.lost = RENEWAL_REFUSED
            raise LeaseLost(lost_message(lease.run_id, lease.lost))
        lease.held_until = started + self._lease_ttl_s

    async def hold(self, lease: Lease, *, for_s: float) -> None:
        lease.check()
        if lease.held_for() < min(for_s, self._lease_ttl_s / 2):  # a short lifetime bounds what is sure
            await self.renew(lease)

    async def _heartbeat(self, lease: Lease) -> None:
        """Renew every third of the lease's lifetime; a database hiccup is retried at the next beat."""
        while True:
            await asyncio.sleep(self._lease_ttl_s / 3)
            try:
                await self.renew(lease)
            except LeaseLost:
                log.warning("run %s: %s", lease.run_id, lease.lost)
                return
            except (psycopg.Error, OSError) as exc:
                log.warning("run %s: the lease could not be renewed (%s); retrying", lease.run_id, exc)

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

    async def save_artifacts(self, artifacts: Sequence[StoredArtifact], *, lease: Lease) -> None:
        if not artifacts:
            return
        async with self._fenced(lease) as cur:
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
                " cost_usd, latency_ms, ok, error, created_at, fallbacks)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                    Jsonb([f.model_dump(mode="json") for f in usage.fallbacks]),
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
