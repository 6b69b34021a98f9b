"""The immutable audit in PostgreSQL: a trigger refuses UPDATE, DELETE and TRUNCATE."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from memory.base import AuditEntry, AuditReport
from memory.chain import GENESIS, canonical, link_hash, verify_chain

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0201_audit",
        """
        CREATE TABLE IF NOT EXISTS audit_entries (
            run_id text NOT NULL,
            seq int NOT NULL,
            key text NOT NULL,
            kind text NOT NULL,
            payload text NOT NULL,
            prev_sha256 text NOT NULL,
            sha256 text NOT NULL,
            created_at timestamptz NOT NULL,
            PRIMARY KEY (run_id, seq),
            UNIQUE (run_id, key)
        );
        -- The head of each chain, kept outside it, so a removed last entry is noticed.
        CREATE TABLE IF NOT EXISTS audit_heads (
            run_id text PRIMARY KEY,
            entries int NOT NULL,
            head_sha256 text NOT NULL
        );
        CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit entries are append-only: % on % refused', TG_OP, TG_TABLE_NAME;
        END $$;
        CREATE OR REPLACE TRIGGER audit_entries_immutable BEFORE UPDATE OR DELETE ON audit_entries
            FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
        CREATE OR REPLACE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries
            FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
        """,
    )
]

_COLUMNS = "run_id, seq, key, kind, payload, prev_sha256, sha256, created_at"


class PostgresAuditLog:
    """``AuditLog`` on a psycopg pool; appends for one run are serialised by a row lock."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def append(self, run_id: str, key: str, kind: str, payload: dict[str, Any]) -> AuditEntry:
        text = canonical(payload)
        async with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "INSERT INTO audit_heads (run_id, entries, head_sha256) VALUES (%s, 0, %s)"
                " ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id"
                " RETURNING entries, head_sha256",
                (run_id, GENESIS),
            )
            head = await cur.fetchone()
            assert head is not None
            await cur.execute(
                f"SELECT {_COLUMNS} FROM audit_entries WHERE run_id = %s AND key = %s", (run_id, key)
            )
            existing = await cur.fetchone()
            if existing:
                return AuditEntry.model_validate(existing)
            seq, prev = head["entries"], head["head_sha256"]
            entry = AuditEntry(
                run_id=run_id,
                seq=seq,
                key=key,
                kind=kind,
                payload=text,
                prev_sha256=prev,
                sha256=link_hash(prev, run_id, seq, key, kind, text),
                created_at=datetime.now(UTC),
            )
            await cur.execute(
                f"INSERT INTO audit_entries ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (run_id, seq, key, kind, text, prev, entry.sha256, entry.created_at),
            )
            await cur.execute(
                "UPDATE audit_heads SET entries = %s, head_sha256 = %s WHERE run_id = %s",
                (seq + 1, entry.sha256, run_id),
            )
            return entry

    async def entries(self, run_id: str) -> list[AuditEntry]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM audit_entries WHERE run_id = %s ORDER BY seq", (run_id,)
            )
            return [AuditEntry.model_validate(r) for r in await cur.fetchall()]

    async def verify(self, run_id: str) -> AuditReport:
        entries = await self.entries(run_id)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT entries, head_sha256 FROM audit_heads WHERE run_id = %s", (run_id,)
            )
            head = await cur.fetchone()
        return verify_chain(run_id, entries, (head[0], head[1]) if head else None)
