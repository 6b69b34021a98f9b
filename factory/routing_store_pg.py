"""``RoutingStore`` in PostgreSQL: an append-only table of changes (a trigger refuses edits)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from routing.config import Cooldown, Deployment, RoutingChange

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0401_routing_changes",
        """
        CREATE TABLE IF NOT EXISTS routing_changes (
            version bigserial PRIMARY KEY,
            target text NOT NULL,       -- an alias, or 'cooldown'
            value jsonb,                -- a chain or a cooldown policy; NULL resets the target
            changed_by text NOT NULL,
            changed_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS routing_changes_target ON routing_changes (target, version DESC);
        CREATE OR REPLACE FUNCTION routing_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'routing changes are history: record a new change instead' USING ERRCODE = 'RC001';
        END $$;
        DROP TRIGGER IF EXISTS routing_changes_append_only ON routing_changes;
        CREATE TRIGGER routing_changes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON routing_changes
            FOR EACH STATEMENT EXECUTE FUNCTION routing_changes_append_only();
        """,
    ),
]

_COLUMNS = "version, target, value, changed_by, changed_at"


def _change(row: dict[str, Any]) -> RoutingChange:
    """A stored change; one that no longer validates (a provider LiteLLM dropped, a stricter rule) is
    kept, marked ``invalid``, so every command still works and the lower sources serve its alias."""
    value = row.pop("value")
    try:
        if value is None:
            return RoutingChange(**row)
        if row["target"] == "cooldown":
            return RoutingChange(**row, cooldown=Cooldown.model_validate(value))
        return RoutingChange(**row, chain=[Deployment.model_validate(d) for d in value])
    except ValidationError as exc:
        first = exc.errors()[0]
        return RoutingChange(**row, invalid=str(first["msg"]).removeprefix("Value error, ")[:300])


class PostgresRoutingStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def change(
        self, target: str, *, chain: list[Deployment] | None = None, cooldown: Cooldown | None = None, by: str
    ) -> RoutingChange:
        value: Any = None
        if chain is not None:
            value = [d.model_dump(mode="json", exclude_none=True) for d in chain]
        elif cooldown is not None:
            value = cooldown.model_dump(mode="json")
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"INSERT INTO routing_changes (target, value, changed_by) VALUES (%s, %s, %s) RETURNING {_COLUMNS}",
                (target, Jsonb(value) if value is not None else None, by),
            )
            row = await cur.fetchone()
        assert row is not None  # INSERT ... RETURNING returns the row
        return _change(row)

    async def latest(self) -> list[RoutingChange]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT DISTINCT ON (target) {_COLUMNS} FROM routing_changes ORDER BY target, version DESC"
            )
            return [_change(r) for r in await cur.fetchall()]

    async def history(self, limit: int = 50) -> list[RoutingChange]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM routing_changes ORDER BY version DESC LIMIT %s", (limit,)
            )
            return [_change(r) for r in await cur.fetchall()]
