"""Escalations in PostgreSQL: they survive restarts of every process and browser.

Every change is one conditional UPDATE (``status`` still waiting and ``version`` as read), so of
two operators deciding one escalation, exactly one wins and the other learns it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from hitl.base import AuditOf, Change, Escalation, unrecorded

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
    ),
    (
        "0102_escalation_sla_window",
        """
        ALTER TABLE escalations ADD COLUMN IF NOT EXISTS sla_started_at timestamptz;
        CREATE INDEX IF NOT EXISTS escalations_stage ON escalations (run_id, stage_index, created_at);
        """,
    ),
]

_ORDER = (
    "ORDER BY CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END,"
    " sla_deadline, created_at"
)
_COLUMNS = (
    "id, run_id, stage_index, team, kind, priority, question, context, status, answer, decided_by,"
    " sla_deadline, escalation_level, created_at, decided_at, sla_started_at, version"
)
#: The columns without the context (reasoning, artifact excerpts): what a list needs.
_BRIEF = _COLUMNS.replace(" context,", " '{}'::jsonb AS context,")
_WAITING = "status IN ('open', 'deferred')"
_APPEND = "SELECT 1 FROM audit_append(%s, %s, %s, %s)"  # memory's function (migration 0202)
_CLOSE_FOR_RUN = (
    "UPDATE escalations SET status = 'expired', answer = %(answer)s, decided_by = %(by)s, decided_at = %(at)s,"
    f" version = version + 1 WHERE run_id = %(run)s AND {_WAITING} RETURNING {_COLUMNS}"
)

#: The audit's one text form of a payload (what is hashed and stored).
Canonical = Callable[[dict[str, Any]], str]


class PostgresEscalationQueue:
    """``EscalationQueue`` on a psycopg connection pool.

    With ``canonical`` (the audit's text form of a payload, ``memory.chain.canonical``, given by the
    composition root so this package need not import ``memory``), a change's audit entry is
    appended by the SQL function ``audit_append`` in the change's own transaction.
    """

    def __init__(self, pool: AsyncConnectionPool, *, canonical: Canonical | None = None) -> None:
        self._pool = pool
        self._canonical = canonical

    async def open(self, escalation: Escalation) -> Escalation:
        e = escalation
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"""
                WITH inserted AS (
                    INSERT INTO escalations ({_COLUMNS}) VALUES ({", ".join(["%s"] * 17)})
                    ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}
                )
                SELECT {_COLUMNS} FROM inserted
                UNION ALL SELECT {_COLUMNS} FROM escalations WHERE id = %s AND NOT EXISTS (SELECT 1 FROM inserted)
                """,
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
                    e.sla_started_at or e.created_at,
                    e.version,
                    e.id,
                ),
            )
            row = await cur.fetchone()
        assert row is not None  # inserted, or already there
        return Escalation.model_validate(row)

    async def get(self, escalation_id: str) -> Escalation | None:
        rows = await self._select("id = %s", (escalation_id,))
        return rows[0] if rows else None

    async def list_open(self, run_id: str | None = None, *, brief: bool = False) -> list[Escalation]:
        columns = _BRIEF if brief else _COLUMNS
        if run_id is None:
            return await self._select(_WAITING, (), _ORDER, columns)
        return await self._select(f"{_WAITING} AND run_id = %s", (run_id,), _ORDER, columns)

    async def for_run(self, run_id: str) -> list[Escalation]:
        return await self._select("run_id = %s", (run_id,), "ORDER BY created_at, id")

    async def for_stage(self, run_id: str, stage_index: int) -> list[Escalation]:
        return await self._select("run_id = %s AND stage_index = %s", (run_id, stage_index), "ORDER BY created_at, id")

    async def apply(
        self, escalation_id: str, expected_version: int, change: Change, *, audit: AuditOf | None = None
    ) -> Escalation | None:
        sets = ["status = %(status)s", "version = version + 1"]
        params: dict[str, Any] = {"id": escalation_id, "version": expected_version, "status": change.status.value}
        for column, value in change.model_dump(exclude={"status"}, exclude_none=True).items():
            sets.append(f"{column} = %({column})s")
            params[column] = value
        return await self._update(", ".join(sets), params, audit)

    async def set_level(
        self, escalation_id: str, expected_version: int, level: int, *, audit: AuditOf | None = None
    ) -> Escalation | None:
        return await self._update(
            "escalation_level = %(level)s, version = version + 1",
            {"id": escalation_id, "version": expected_version, "level": level},
            audit,
        )

    async def close_for_run(
        self, run_id: str, *, by: str, reason: str | None, audit: AuditOf | None = None
    ) -> list[Escalation]:
        params = {"run": run_id, "answer": reason, "by": by, "at": datetime.now(UTC)}
        changed = await self._change_all(_CLOSE_FOR_RUN, params, audit)
        return sorted(changed, key=lambda e: (e.created_at, e.id))

    async def _update(self, sets: str, params: dict[str, Any], audit: AuditOf | None) -> Escalation | None:
        sql = (
            f"UPDATE escalations SET {sets} WHERE id = %(id)s AND version = %(version)s AND {_WAITING}"
            f" RETURNING {_COLUMNS}"
        )
        changed = await self._change_all(sql, params, audit)
        return changed[0] if changed else None

    async def _change_all(self, sql: str, params: dict[str, Any], audit: AuditOf | None) -> list[Escalation]:
        """The escalations one UPDATE changed; with ``audit`` (and an audit writer), each one's entry
        is appended in the UPDATE's transaction: if one cannot be, nothing changed."""
        async with self._pool.connection() as conn:
            if audit is None or self._canonical is None:  # one statement, its own transaction
                rows = await (await conn.cursor(row_factory=dict_row).execute(sql, params)).fetchall()
                return [Escalation.model_validate(row) for row in rows]
            async with conn.transaction():
                rows = await (await conn.cursor(row_factory=dict_row).execute(sql, params)).fetchall()
                changed = [Escalation.model_validate(row) for row in rows]
                for escalation in changed:
                    key, kind, payload = audit(escalation)
                    try:
                        await conn.execute(_APPEND, (escalation.run_id, key, kind, self._canonical(payload)))
                    except psycopg.errors.OperationalError:
                        raise  # the connection, not the audit: the error tree's service handling applies
                    except psycopg.Error as exc:  # raised inside the transaction: the change is rolled back
                        raise unrecorded(escalation, exc.diag.message_primary or str(exc)) from exc
            return changed

    async def _select(
        self, where: str, params: tuple[Any, ...], order: str = "", columns: str = _COLUMNS
    ) -> list[Escalation]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {columns} FROM escalations WHERE {where} {order}", params
            )
            return [Escalation.model_validate(r) for r in await cur.fetchall()]
