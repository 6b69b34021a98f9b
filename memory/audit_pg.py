"""The immutable audit in PostgreSQL: a trigger refuses UPDATE, DELETE and TRUNCATE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from factory.errors import MemoryStoreError
from memory.base import AuditAnchor, AuditEntry, AuditHit, AuditReport
from memory.chain import canonical, verify_chain
from memory.search_bounds import bounded_query

#: Characters of a payload the full-text index covers. A tsvector holds under 1 MB (1,048,575
#: bytes of lexemes, 2 bytes of position count and 2 a position each, aligned); a character costs
#: it at most about 8.25 bytes: 4 bytes of UTF-8 stored twice (a hyphenated word is indexed whole
#: and by its parts), plus a lexeme's overhead shared with its separator. Measured worst: 7.55
#: bytes a character ("a-b" pairs of 4-byte letters fail from ~139,000 characters). So 100,000
#: characters (under ~825 kB) can never fail an append, and still cover any ordinary entry.
SEARCH_PREFIX_CHARS = 100_000
_SEARCHED = f"to_tsvector('simple', left(payload, {SEARCH_PREFIX_CHARS}))"

#: What the database answers to an append it refuses (guards raise; a broken head collides).
_REFUSALS = (psycopg.errors.RaiseException, psycopg.errors.IntegrityError)

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
    (
        "0204_audit_head_guard",
        r"""
        -- The head is protected like the entries: never removed, created only at genesis, moved
        -- only one entry forward onto the entry that continues it. audit_append (0202) touches the
        -- row without changing it to lock it: that no-op is allowed.
        CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
                RAISE EXCEPTION 'audit heads are permanent: % on audit_heads refused', TG_OP;
            END IF;
            IF TG_OP = 'INSERT' THEN
                -- A conflicting insert (audit_append's ON CONFLICT) becomes the no-op update below.
                IF NEW.entries = 0 AND NEW.head_sha256 = repeat('0', 64) AND (
                    EXISTS (SELECT 1 FROM audit_heads WHERE run_id = NEW.run_id)
                    OR NOT EXISTS (SELECT 1 FROM audit_entries WHERE run_id = NEW.run_id)
                ) THEN
                    RETURN NEW;
                END IF;
                RAISE EXCEPTION 'audit head of run % refused: a head starts at genesis, before any entry', NEW.run_id;
            END IF;
            IF NEW.run_id = OLD.run_id AND NEW.entries = OLD.entries AND NEW.head_sha256 = OLD.head_sha256 THEN
                RETURN NEW;
            END IF;
            IF NEW.run_id = OLD.run_id AND NEW.entries = OLD.entries + 1 AND EXISTS (
                SELECT 1 FROM audit_entries
                WHERE run_id = OLD.run_id AND seq = OLD.entries
                  AND sha256 = NEW.head_sha256 AND prev_sha256 = OLD.head_sha256
            ) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'audit head of run % refused: it moves only onto the entry appended after it', OLD.run_id;
        END $$;
        CREATE OR REPLACE TRIGGER audit_heads_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_heads
            FOR EACH ROW EXECUTE FUNCTION audit_head_guard();
        CREATE OR REPLACE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads
            FOR EACH STATEMENT EXECUTE FUNCTION audit_head_guard();

        -- An entry continues its chain's head, which the database itself moves onto it: an insert
        -- that bypasses audit_append can neither fork the chain nor leave the head behind (which
        -- would make every later append fail).
        CREATE OR REPLACE FUNCTION audit_entry_continues() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            h audit_heads;
        BEGIN
            SELECT * INTO h FROM audit_heads WHERE run_id = NEW.run_id FOR UPDATE;
            IF NOT FOUND OR NEW.seq <> h.entries OR NEW.prev_sha256 <> h.head_sha256 THEN
                RAISE EXCEPTION 'audit entry % of run % refused: it does not continue the head of its chain',
                    NEW.seq, NEW.run_id;
            END IF;
            RETURN NEW;
        END $$;
        CREATE OR REPLACE FUNCTION audit_entry_advance_head() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE audit_heads SET entries = NEW.seq + 1, head_sha256 = NEW.sha256 WHERE run_id = NEW.run_id;
            RETURN NULL;
        END $$;
        CREATE OR REPLACE TRIGGER audit_entries_continue BEFORE INSERT ON audit_entries
            FOR EACH ROW EXECUTE FUNCTION audit_entry_continues();
        CREATE OR REPLACE TRIGGER audit_entries_advance AFTER INSERT ON audit_entries
            FOR EACH ROW EXECUTE FUNCTION audit_entry_advance_head();
        """,
    ),
    (
        "0205_audit_search_bounded",
        f"""
        -- Full text is indexed over a bounded prefix: a tsvector holds under 1 MB, and a payload
        -- past it failed the append (and the commit that needed it). See SEARCH_PREFIX_CHARS.
        DROP INDEX IF EXISTS audit_entries_text;
        CREATE INDEX IF NOT EXISTS audit_entries_text_prefix ON audit_entries
            USING gin (to_tsvector('simple', left(payload, {SEARCH_PREFIX_CHARS})));
        """,
    ),
    (
        "0206_audit_append_one_head_write",
        r"""
        -- Since 0204 the entry's own triggers check it continues the head and move the head onto
        -- it; an append now only locks the head (no write) and inserts: one new head version per
        -- entry instead of three (the touch, the trigger's move, a repeated move).
        CREATE OR REPLACE FUNCTION audit_append(p_run text, p_key text, p_kind text, p_payload text)
        RETURNS SETOF audit_entries LANGUAGE plpgsql AS $$
        DECLARE
            h audit_heads;
            e audit_entries;
        BEGIN
            SELECT * INTO h FROM audit_heads WHERE run_id = p_run FOR UPDATE;  -- appends to a run are serialised
            IF NOT FOUND THEN
                INSERT INTO audit_heads (run_id, entries, head_sha256) VALUES (p_run, 0, repeat('0', 64))
                    ON CONFLICT (run_id) DO NOTHING;
                SELECT * INTO h FROM audit_heads WHERE run_id = p_run FOR UPDATE;
            END IF;
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
            RETURN NEXT e;
        END $$;
        """,
    ),
]

_COLUMNS = "run_id, seq, key, kind, payload, prev_sha256, sha256, created_at"
_APPEND = "SELECT * FROM audit_append(%s, %s, %s, %s)"


def _refused(run_id: str, exc: psycopg.Error) -> MemoryStoreError:
    """An append the database refused (a guard, a broken head), as the error tree says it."""
    first = (exc.diag.message_primary or str(exc)).strip().splitlines()[0]
    return MemoryStoreError(
        f"the audit of run {run_id} refused an entry ({first}); check it with `factory audit verify {run_id}`"
    )


class PostgresAuditLog:
    """``AuditLog`` on a psycopg pool; appends for one run are serialised by a row lock."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def append(self, run_id: str, key: str, kind: str, payload: dict[str, Any]) -> AuditEntry:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.cursor(row_factory=dict_row).execute(_APPEND, (run_id, key, kind, canonical(payload)))
                row = await cur.fetchone()
        except _REFUSALS as exc:
            raise _refused(run_id, exc) from exc
        assert row is not None  # the function always returns the entry
        return AuditEntry.model_validate(row)

    async def append_many(self, run_id: str, entries: Sequence[tuple[str, str, dict[str, Any]]]) -> list[AuditEntry]:
        try:
            async with self._pool.connection() as conn, conn.pipeline():
                cursors = []
                for key, kind, payload in entries:
                    cursor = conn.cursor(row_factory=dict_row)
                    await cursor.execute(_APPEND, (run_id, key, kind, canonical(payload)))
                    cursors.append(cursor)
                rows = [await cursor.fetchone() for cursor in cursors]
        except _REFUSALS as exc:
            raise _refused(run_id, exc) from exc
        return [AuditEntry.model_validate(row) for row in rows]

    async def entries(self, run_id: str) -> list[AuditEntry]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM audit_entries WHERE run_id = %s ORDER BY seq", (run_id,)
            )
            return [AuditEntry.model_validate(r) for r in await cur.fetchall()]

    async def verify(self, run_id: str, *, anchor: AuditAnchor | None = None) -> AuditReport:
        async with self._pool.connection() as conn, conn.transaction():
            # One snapshot for the head and the chain: an append in between is not a mismatch.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await conn.execute("SELECT entries, head_sha256 FROM audit_heads WHERE run_id = %s", (run_id,))
            head = await cur.fetchone()
            rows = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM audit_entries WHERE run_id = %s ORDER BY seq", (run_id,)
            )
            entries = [AuditEntry.model_validate(r) for r in await rows.fetchall()]
        return verify_chain(run_id, entries, (head[0], head[1]) if head else None, anchor=anchor)

    async def search(self, query: str, *, limit: int = 20) -> list[AuditHit]:
        bounded_query(query)  # a query too large to parse is an input error, not a database one
        if not query.strip():
            return []
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"""
                SELECT run_id, seq, kind, created_at,
                       ts_rank({_SEARCHED}, q) AS rank,
                       ts_headline('simple', left(payload, {SEARCH_PREFIX_CHARS}), q,
                                   'MaxWords=30, MinWords=10, MaxFragments=1') AS excerpt
                FROM audit_entries, websearch_to_tsquery('simple', %s) AS q
                WHERE {_SEARCHED} @@ q
                ORDER BY rank DESC, created_at DESC LIMIT %s
                """,
                (query, limit),
            )
            return [AuditHit.model_validate(r) for r in await cur.fetchall()]
