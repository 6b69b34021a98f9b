"""Escalations in PostgreSQL: they survive restarts of every process and browser."""

from __future__ import annotations

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from hitl.base import Escalation

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0101_escalations",
        """
        CREATE TABLE IF NOT EXISTS escalations (
            id text PRIMARY KEY,
            run_id text NOT NULL,
            stage_index int NOT NULL,
            team text NOT NULL,
            kind text NOT NULL,
            priority text NOT NULL,
            question text NOT NULL,
            context jsonb NOT NULL DEFAULT '{}',
            status text NOT NULL,
            answer text,
            decided_by text,
            sla_deadline timestamptz NOT NULL,
            escalation_level int NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL,
            decided_at timestamptz,
            version int NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS escalations_open ON escalations (status, sla_deadline);
        CREATE INDEX IF NOT EXISTS escalations_run ON escalations (run_id);
        """,
    )
]

_ORDER = (
    "ORDER BY CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END,"
    " sla_deadline, created_at"
)
_COLUMNS = (
    "id, run_id, stage_index, team, kind, priority, question, context, status, answer, decided_by,"
    " sla_deadline, escalation_level, created_at, decided_at"
)


class PostgresEscalationQueue:
    """``EscalationQueue`` on a psycopg connection pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def open(self, escalation: Escalation) -> Escalation:
        e = escalation
        async with self._pool.connection() as conn:
            await conn.execute(
                f"INSERT INTO escalations ({_COLUMNS}) VALUES ({', '.join(['%s'] * 15)}) ON CONFLICT (id) DO NOTHING",
                (
                    e.id,
                    e.run_id,
                    e.stage_index,
                    e.team,
                    e.kind.value,
                    e.priority.value,
                    e.question,
                    Jsonb(e.context),
                    e.status.value,
                    e.answer,
                    e.decided_by,
                    e.sla_deadline,
                    e.escalation_level,
                    e.created_at,
                    e.decided_at,
                ),
            )
        stored = await self.get(e.id)
        assert stored is not None  # inserted above or already present
        return stored

    async def get(self, escalation_id: str) -> Escalation | None:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM escalations WHERE id = %s", (escalation_id,)
            )
            row = await cur.fetchone()
        return Escalation.model_validate(row) if row else None

    async def list_open(self, run_id: str | None = None) -> list[Escalation]:
        where = "status IN ('open', 'deferred')" + (" AND run_id = %s" if run_id else "")
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM escalations WHERE {where} {_ORDER}", (run_id,) if run_id else ()
            )
            return [Escalation.model_validate(r) for r in await cur.fetchall()]
