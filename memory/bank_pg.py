"""Memory banks in PostgreSQL with pgvector: one table, an HNSW cosine index on half floats, banks as a column."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pgvector.psycopg.vector import register_vector_info
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from factory.errors import MemoryStoreError
from memory.base import (
    ALSO_RUNS_KEPT,
    DIMENSIONS,
    MERGEABLE,
    SEARCHABLE,
    MemoryItem,
    MemoryKind,
    NewMemory,
    Retained,
    Vector,
)
from memory.dedupe import checked, within_batch

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0301_memory",
        f"""
        CREATE EXTENSION IF NOT EXISTS vector;
        CREATE TABLE IF NOT EXISTS memory_items (
            id bigserial PRIMARY KEY,
            bank text NOT NULL,
            kind text NOT NULL,
            text text NOT NULL,
            embedding vector({DIMENSIONS}) NOT NULL,
            run_id text,
            metadata jsonb NOT NULL DEFAULT '{{}}',
            seen int NOT NULL DEFAULT 1,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        );
        CREATE INDEX IF NOT EXISTS memory_items_embedding ON memory_items
            USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
        CREATE INDEX IF NOT EXISTS memory_items_bank_kind ON memory_items (bank, kind, created_at DESC);
        """,
    ),
    (
        "0302_memory_run_index",
        "CREATE INDEX IF NOT EXISTS memory_items_run ON memory_items (run_id);",  # run-scoped recall, exact
    ),
    (
        # Ingest is HNSW insert work (~1.3 ms an item at 100k, twenty times the row itself), mostly
        # distances and the pruning of neighbour lists. Half floats halve the index and the heap
        # (similarity off by ~1e-3, far inside the dedupe threshold's margin); m = 12 keeps 24 neighbours
        # a node instead of 32, so an insert prunes fewer, shorter lists. Over 100k synthetic items, one
        # writer: 707 -> 1,021 items/s, recall@8 0.997 -> 0.992 (bench/memory.py).
        "0303_memory_halfvec_m12",
        f"""
        SET LOCAL maintenance_work_mem = '256MB';
        DROP INDEX IF EXISTS memory_items_embedding;
        ALTER TABLE memory_items ALTER COLUMN embedding TYPE halfvec({DIMENSIONS});
        CREATE INDEX memory_items_embedding ON memory_items
            USING hnsw (embedding halfvec_cosine_ops) WITH (m = 12, ef_construction = 64);
        """,
    ),
    (
        # A stage's retention was its HNSW inserts, on the critical path of every stage (~0.5-1.2 ms an
        # item on 2 cores). Mental models are never searched by similarity: stored without a vector,
        # they cost no embedding and no index entry. A merge (``seen``, ``also_runs``) changes no
        # indexed column: with room left on the page it is a HOT update, which re-inserts nothing in
        # the vector index (at fillfactor 100 every merge was a full HNSW insert of the same vector).
        # The fillfactor applies to pages written from now on; older pages get room when the table
        # is rewritten (VACUUM FULL).
        "0304_memory_unindexed_models",
        """
        ALTER TABLE memory_items ALTER COLUMN embedding DROP NOT NULL;
        UPDATE memory_items SET embedding = NULL WHERE kind = 'mental_model';
        ALTER TABLE memory_items SET (fillfactor = 85);
        """,
    ),
]

_COLUMNS = "id, bank, kind, text, run_id, metadata, seen, created_at, updated_at"
# HNSW candidate lists; with iterative scans, filtered searches still fill ``limit``. 200 for recall:
# at 100 a query now and then stays stuck in the wrong region of clustered data (recall@8 0.99 -> 0.996
# over 100k items, +0.2 ms). 100 for the per-item nearest lookup of dedupe, which runs once per item.
EF_SEARCH = 200
DEDUPE_EF_SEARCH = 100
# A large batch is inserted over up to ``writers`` connections at once: the HNSW work runs in each
# connection's backend, one core each. Below this many rows a writer, a second one is not worth it.
WRITER_MIN_ROWS = 100
WRITER_WAIT_S = 0.2  # how long to wait for a spare pool connection before inserting without it


def vector_text(vector: Sequence[float]) -> str:
    """pgvector's text form, '[x,y,...]'."""
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


Row = np.ndarray[Any, np.dtype[np.float32]] | None


def _rows(vectors: Sequence[Vector]) -> list[Row]:
    """Vectors as float32 arrays, sent in pgvector's binary form (a tenth of the text form's work);
    ``None`` stays ``None`` (stored as NULL)."""
    return [None if v is None else np.asarray(v, dtype=np.float32) for v in vectors]


def _search_settings(ef_search: int) -> str:
    """Both HNSW settings in one statement (for the current transaction only, as SET LOCAL), so it
    can be pipelined with the search."""
    return (
        f"SELECT set_config('hnsw.ef_search', '{int(ef_search)}', true),"
        " set_config('hnsw.iterative_scan', 'relaxed_order', true)"
    )


def _item(row: dict[str, Any]) -> MemoryItem:
    metadata = row["metadata"]
    return MemoryItem(
        id=row["id"],
        bank=row["bank"],
        kind=MemoryKind(row["kind"]),
        text=row["text"],
        run_id=row["run_id"],
        metadata=metadata if isinstance(metadata, dict) else json.loads(metadata),
        seen=row["seen"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PgVectorMemoryStore:
    """``MemoryStore`` on PostgreSQL + pgvector.

    ``writers``: how many pool connections a large ``retain`` inserts over in parallel (one backend,
    so one core, each). A batch stays all or nothing: the writers' transactions commit back to back
    once every row and merge is written, and an error before that rolls all of them back (only a
    connection lost between those commits could keep part of a batch).
    """

    def __init__(self, pool: AsyncConnectionPool, *, writers: int = 2) -> None:
        if writers < 1:
            raise ValueError(f"writers must be at least 1, not {writers}")
        self._pool = pool
        self._writers = writers
        self._vector_type: TypeInfo | None = None
        self._binary: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()

    @property
    def writers(self) -> int:
        """At most how many connections one ``retain`` inserts over."""
        return self._writers

    async def _binary_vectors(self, conn: AsyncConnection[Any]) -> None:
        """Lets ``conn`` send numpy arrays as binary vectors (the type is looked up once per store)."""
        if conn in self._binary:
            return
        if self._vector_type is None:
            self._vector_type = await TypeInfo.fetch(conn, "vector")
            if self._vector_type is None:
                raise MemoryStoreError("the pgvector type 'vector' is missing; run the migrations (factory doctor)")
        register_vector_info(conn, self._vector_type)
        self._binary.add(conn)

    async def retain(
        self, items: Sequence[NewMemory], vectors: Sequence[Vector], *, dedupe_at: float | None
    ) -> list[Retained]:
        vectors = checked(items, vectors)
        if not items:
            return []
        now = datetime.now(UTC)
        outcomes: list[Retained | None] = [None] * len(items)
        first_of = within_batch(items, vectors, dedupe_at) if dedupe_at is not None else list(range(len(items)))
        rows = _rows(vectors)
        async with AsyncExitStack() as stack:
            conn = await stack.enter_async_context(self._pool.connection())
            await stack.enter_async_context(conn.transaction())
            await self._binary_vectors(conn)
            nearest = await self._nearest_stored(conn, items, rows) if dedupe_at is not None else {}
            merges: dict[int, list[int]] = {}  # stored item id -> batch positions merged into it
            for i in range(len(items)):
                near = nearest.get(i)
                if first_of[i] == i and near is not None and dedupe_at is not None and near[1] >= dedupe_at:
                    outcomes[i] = Retained(item_id=near[0], merged=True, similarity=round(near[1], 4))
                    merges.setdefault(near[0], []).append(i)
            # Items that are not searchable (a stage's mental model, which marks its memory as retained)
            # go first, into this connection's slice: its transaction commits last.
            fresh = sorted(
                (i for i in range(len(items)) if first_of[i] == i and outcomes[i] is None),
                key=lambda i: items[i].kind in SEARCHABLE,
            )
            writers = [conn, *await self._spare_writers(stack, len(fresh))]
            ids = await self._insert_over(writers, [items[i] for i in fresh], [rows[i] for i in fresh], now)
            for i, item_id in zip(fresh, ids, strict=True):
                outcomes[i] = Retained(item_id=item_id, merged=False)
            for i in range(len(items)):  # later copies within the batch merge into the first
                if first_of[i] != i:
                    target = outcomes[first_of[i]]
                    assert target is not None
                    outcomes[i] = Retained(item_id=target.item_id, merged=True)
                    merges.setdefault(target.item_id, []).append(i)
            await self._merge(conn, merges, items, now)
        return [o for o in outcomes if o is not None]

    @staticmethod
    async def _merge(conn: Any, merges: dict[int, list[int]], items: Sequence[NewMemory], now: datetime) -> None:
        """One UPDATE for every stored item that batch positions merged into: ``seen`` grows by their
        number and ``also_runs`` gains their run ids (``memory.base.also_runs``: each once, the latest
        ``ALSO_RUNS_KEPT``, oldest first)."""
        if not merges:
            return
        await conn.execute(
            """
            UPDATE memory_items AS m SET seen = m.seen + u.times, updated_at = %s,
                metadata = m.metadata || jsonb_build_object('also_runs', (
                    SELECT coalesce(jsonb_agg(r ORDER BY at), '[]') FROM (
                        SELECT r, max(at) AS at FROM (
                            SELECT r, at FROM jsonb_array_elements_text(coalesce(m.metadata -> 'also_runs', '[]'))
                                WITH ORDINALITY AS kept(r, at)
                            UNION ALL
                            SELECT r, 1000000 + at
                                FROM jsonb_array_elements_text(u.runs) WITH ORDINALITY AS merged(r, at)
                        ) AS every(r, at)
                        GROUP BY r ORDER BY max(at) DESC LIMIT %s
                    ) AS latest(r, at)
                ))
            FROM unnest(%s::bigint[], %s::int[], %s::jsonb[]) AS u(id, times, runs)
            WHERE m.id = u.id
            """,
            (
                now,
                ALSO_RUNS_KEPT,
                list(merges),
                [len(positions) for positions in merges.values()],
                [Jsonb([items[p].run_id for p in positions if items[p].run_id]) for positions in merges.values()],
            ),
        )

    async def _spare_writers(self, stack: AsyncExitStack, rows: int) -> list[AsyncConnection[Any]]:
        """Extra connections for a batch of ``rows``, each in a transaction that ``stack`` commits just
        before the caller's, once all the work is done. Only connections the pool can spare at once: when
        it is busy the batch goes over fewer writers, so no two batches hold one and wait for another."""
        spare: list[AsyncConnection[Any]] = []
        while len(spare) + 1 < min(self._writers, rows // WRITER_MIN_ROWS):
            try:
                conn = await stack.enter_async_context(self._pool.connection(timeout=WRITER_WAIT_S))
            except PoolTimeout:
                break
            await self._binary_vectors(conn)
            await stack.enter_async_context(conn.transaction())
            spare.append(conn)
        return spare

    async def _insert_over(
        self,
        writers: Sequence[AsyncConnection[Any]],
        items: Sequence[NewMemory],
        vectors: Sequence[Row],
        now: datetime,
    ) -> list[int]:
        """Contiguous slices of the rows, one per writer, inserted at once; ids in the rows' order."""
        if len(writers) == 1:
            return await self._insert(writers[0], items, vectors, now)
        size = -(-len(items) // len(writers))
        tasks = [
            asyncio.create_task(self._insert(conn, items[at : at + size], vectors[at : at + size], now))
            for conn, at in zip(writers, range(0, len(items), size), strict=False)
        ]
        try:
            slices = await asyncio.gather(*tasks)
        except (Exception, asyncio.CancelledError):
            # The other slices stop (psycopg cancels their queries) before the transactions roll back;
            # the caller sees the first error itself.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [item_id for ids in slices for item_id in ids]

    @staticmethod
    async def _nearest_stored(
        conn: Any, items: Sequence[NewMemory], vectors: Sequence[Row]
    ) -> dict[int, tuple[int, float]]:
        """For each item of a kind that merges, the most similar stored item of the same bank and kind:
        one round trip."""
        wanted = [i for i, item in enumerate(items) if item.kind in MERGEABLE]
        if not wanted:
            return {}
        async with conn.pipeline():
            await conn.execute(_search_settings(DEDUPE_EF_SEARCH))
            cursor = await conn.execute(
                """
                SELECT new.ord, near.id, 1 - (near.embedding <=> new.vec) AS similarity
                FROM unnest(%s::int[], %s::text[], %s::text[], %b::vector[]::halfvec[]) AS new(ord, bank, kind, vec)
                CROSS JOIN LATERAL (
                    SELECT m.id, m.embedding FROM memory_items m
                    WHERE m.bank = new.bank AND m.kind = new.kind
                    ORDER BY m.embedding <=> new.vec LIMIT 1
                ) AS near
                """,
                (
                    wanted,
                    [items[i].bank for i in wanted],
                    [items[i].kind.value for i in wanted],
                    [vectors[i] for i in wanted],
                ),
            )
            return {row[0]: (row[1], float(row[2])) for row in await cursor.fetchall()}

    @staticmethod
    async def _insert(conn: Any, items: Sequence[NewMemory], vectors: Sequence[Row], now: datetime) -> list[int]:
        if not items:
            return []
        cursor = await conn.execute(
            """
            INSERT INTO memory_items (bank, kind, text, embedding, run_id, metadata, created_at, updated_at)
            SELECT bank, kind, text, vec, run_id, metadata, %s, %s
            FROM unnest(%s::text[], %s::text[], %s::text[], %b::vector[]::halfvec[], %s::text[], %s::jsonb[])
                AS new(bank, kind, text, vec, run_id, metadata)
            RETURNING id
            """,
            (
                now,
                now,
                [i.bank for i in items],
                [i.kind.value for i in items],
                [i.text for i in items],
                list(vectors),
                [i.run_id for i in items],
                [Jsonb(i.metadata) for i in items],
            ),
        )
        return [row[0] for row in await cursor.fetchall()]

    async def search(
        self,
        banks: Sequence[str],
        vector: Sequence[float],
        *,
        limit: int,
        kinds: Sequence[MemoryKind] | None = None,
        run_id: str | None = None,
    ) -> list[tuple[MemoryItem, float]]:
        if limit <= 0 or not banks:
            return []
        filters = ["bank = ANY(%(banks)s)", "embedding IS NOT NULL"]
        params: dict[str, Any] = {"banks": list(banks), "vec": np.asarray(vector, dtype=np.float32), "limit": limit}
        if kinds:
            filters.append("kind = ANY(%(kinds)s)")
            params["kinds"] = [k.value for k in kinds]
        if run_id is not None:
            filters.append("run_id = %(run_id)s")
            params["run_id"] = run_id
        where = " AND ".join(filters)
        # One run's items are few: exact, through the run_id index. A filtered HNSW scan of a large
        # table gives up after hnsw.max_scan_tuples with most of them unfound; OFFSET 0 keeps the
        # planner off the HNSW index.
        source = f"memory_items WHERE {where}"
        if run_id is not None:
            source = f"(SELECT * FROM {source} OFFSET 0) AS m"
        sql = (
            f"SELECT {_COLUMNS}, 1 - (embedding <=> %(vec)b::halfvec) AS similarity FROM {source}"
            " ORDER BY embedding <=> %(vec)b::halfvec LIMIT %(limit)s"
        )
        async with self._pool.connection() as conn:
            await self._binary_vectors(conn)
            cursor = conn.cursor(row_factory=dict_row)
            if run_id is not None:  # an exact scan: no HNSW settings, one round trip
                await cursor.execute(sql, params)
                rows = await cursor.fetchall()
            else:
                async with conn.pipeline(), conn.transaction():  # settings and search sent together
                    await conn.execute(_search_settings(max(EF_SEARCH, limit)))
                    await cursor.execute(sql, params)
                    rows = await cursor.fetchall()
        found = [(_item(r), float(r["similarity"])) for r in rows]
        found.sort(key=lambda pair: pair[1], reverse=True)  # relaxed order: sort the few found
        return found

    async def latest(self, bank: str, kind: MemoryKind) -> MemoryItem | None:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM memory_items WHERE bank = %s AND kind = %s"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                (bank, kind.value),
            )
            row = await cursor.fetchone()
        return _item(row) if row else None

    async def banks_with(self, run_id: str, kind: MemoryKind) -> set[str]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT DISTINCT bank FROM memory_items WHERE run_id = %s AND kind = %s", (run_id, kind.value)
            )
            return {row[0] for row in await cursor.fetchall()}

    async def count(self, bank: str | None = None) -> int:
        async with self._pool.connection() as conn:
            if bank is None:
                cursor = await conn.execute("SELECT count(*) FROM memory_items")
            else:
                cursor = await conn.execute("SELECT count(*) FROM memory_items WHERE bank = %s", (bank,))
            row = await cursor.fetchone()
        return int(row[0]) if row else 0
