"""The immutable audit in PostgreSQL: a trigger refuses UPDATE, DELETE and TRUNCATE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from memory.base import AuditEntry, AuditHit, AuditReport
from memory.chain import canonical, verify_chain
from memory.search_bounds import bounded_query

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
    ),
    (
        "0202_audit_append",
        r"""
        -- One round trip per append. The hash is the same as memory.chain.link_hash, which
        -- verification recomputes independently in Python.
        CREATE OR REPLACE FUNCTION audit_append(p_run text, p_key text, p_kind text, p_payload text)
        RETURNS SETOF audit_entries LANGUAGE plpgsql AS $$
        DECLARE
            h audit_heads;
            e audit_entries;
        BEGIN
            -- Creating or touching the head row locks it: appends to one run are serialised.
            INSERT INTO audit_heads (run_id, entries, head_sha256) VALUES (p_run, 0, repeat('0', 64))
                ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id RETURNING * INTO h;
            SELECT * INTO e FROM audit_entries WHERE run_id = p_run AND key = p_key;
            IF FOUND THEN
                RETURN NEXT e;
                RETURN;
            END IF;
            e.run_id := p_run;
            e.seq := h.entries;
            e.key := p_key;
            e.kind := p_kind;
            e.payload := p_payload;
            e.prev_sha256 := h.head_sha256;
            e.created_at := clock_timestamp();
            e.sha256 := encode(sha256(convert_to(
                concat_ws(E'\x1f', e.prev_sha256, p_run, e.seq::text, p_key, p_kind, p_payload), 'UTF8')), 'hex');
            INSERT INTO audit_entries VALUES (e.*);
            UPDATE audit_heads SET entries = e.seq + 1, head_sha256 = e.sha256 WHERE run_id = p_run;
            RETURN NEXT e;
        END $$;
        """,
    ),
    (
        "0203_audit_search",
        """
        CREATE INDEX IF NOT EXISTS audit_entries_text ON audit_entries
            USING gin (to_tsvector('simple', payload));
        """,
    ),
]

_COLUMNS = "run_id, seq, key, kind, payload, prev_sha256, sha256, created_at"


_APPEND = "SELECT * FROM audit_append(%s, %s, %s, %s)"


class PostgresAuditLog:
    """``AuditLog`` on a psycopg pool; appends for one run are serialised by a row lock."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def append(self, run_id: str, key: str, kind: str, payload: dict[str, Any]) -> AuditEntry:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(_APPEND, (run_id, key, kind, canonical(payload)))
            row = await cur.fetchone()
        assert row is not None  # the function always returns the entry
        return AuditEntry.model_validate(row)

    async def append_many(self, run_id: str, entries: Sequence[tuple[str, str, dict[str, Any]]]) -> list[AuditEntry]:
        async with self._pool.connection() as conn, conn.pipeline():
            cursors = []
            for key, kind, payload in entries:
                cursor = conn.cursor(row_factory=dict_row)
                await cursor.execute(
                    "SELECT * FROM audit_append(%s, %s, %s, %s)", (run_id, key, kind, canonical(payload))
                )
                cursors.append(cursor)
            rows = [await cursor.fetchone() for cursor in cursors]
        return [AuditEntry.model_validate(row) for row in rows]

    async def entries(self, run_id: str) -> list[AuditEntry]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM audit_entries WHERE run_id = %s ORDER BY seq", (run_id,)
            )
            return [AuditEntry.model_validate(r) for r in await cur.fetchall()]

    async def verify(self, run_id: str) -> AuditReport:
        entries = await self.entries(run_id)
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT entries, head_sha256 FROM audit_heads WHERE run_id = %s", (run_id,))
            head = await cur.fetchone()
        return verify_chain(run_id, entries, (head[0], head[1]) if head else None)

    async def search(self, query: str, *, limit: int = 20) -> list[AuditHit]:
        bounded_query(query)  # a query too large to parse is an input error, not a database one
        if not query.strip():
            return []
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                """
                SELECT run_id, seq, kind, created_at,
                       ts_rank(to_tsvector('simple', payload), q) AS rank,
                       ts_headline('simple', payload, q, 'MaxWords=30, MinWords=10, MaxFragments=1') AS excerpt
                FROM audit_entries, websearch_to_tsquery('simple', %s) AS q
                WHERE to_tsvector('simple', payload) @@ q
                ORDER BY rank DESC, created_at DESC LIMIT %s
                """,
                (query, limit),
            )
            return [AuditHit.model_validate(r) for r in await cur.fetchall()]
