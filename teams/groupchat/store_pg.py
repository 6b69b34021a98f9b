"""Group-chat sessions in PostgreSQL: the session, its transcript, queued interjections, and the
AutoGen state saved after every message.

One process drives a session at a time, under a lease in ``run_leases`` (the runs' lease table and
its ``run_lease_held`` fence, keyed by the session id): a row, not a session lock, so it works
through PgBouncer in transaction mode (no advisory lock, no SET, no LISTEN, no prepared
statement). Every write of a driven session checks the lease first, in the same transaction.

A message and the state that includes it commit together, with the interjections it consumed:
a process killed at any point leaves either both or neither, so a resumed session repeats no
message and loses none.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from factory.errors import LeaseLost
from teams.groupchat.base import (
    ChatEntry,
    GroupChatSession,
    GroupChatSummary,
    Interjection,
    SessionStatus,
    StopReason,
)
from teams.lease import Lease, lost_message, owner_is_dead
from teams.store_pg import LEASE_LOST

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0601_groupchat",
        """
        CREATE TABLE IF NOT EXISTS groupchat_sessions (
            id text PRIMARY KEY,
            topic text NOT NULL,
            teams text[] NOT NULL,
            options jsonb NOT NULL,
            status text NOT NULL,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            ended_at timestamptz,
            stop_reason text,
            stop_requested_by text,
            stop_requested_at timestamptz,
            error text,
            state jsonb,             -- AutoGen's save_state after the latest message
            summary jsonb,
            retained boolean NOT NULL DEFAULT false,  -- transcript and summary are in memory
            entries int NOT NULL DEFAULT 0,
            team_messages int NOT NULL DEFAULT 0,
            elapsed_s double precision NOT NULL DEFAULT 0,
            run_ids text[] NOT NULL DEFAULT '{}'
        );
        CREATE INDEX IF NOT EXISTS groupchat_sessions_created ON groupchat_sessions (created_at DESC);
        CREATE TABLE IF NOT EXISTS groupchat_messages (
            session_id text NOT NULL REFERENCES groupchat_sessions(id),
            seq int NOT NULL,
            kind text NOT NULL,
            source text NOT NULL,
            text text NOT NULL,
            tokens int NOT NULL DEFAULT 0,
            meta jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL,
            PRIMARY KEY (session_id, seq)
        );
        CREATE TABLE IF NOT EXISTS groupchat_interjections (
            id bigserial PRIMARY KEY,
            session_id text NOT NULL REFERENCES groupchat_sessions(id),
            by text NOT NULL,
            text text NOT NULL,
            created_at timestamptz NOT NULL,
            consumed_seq int
        );
        CREATE INDEX IF NOT EXISTS groupchat_interjections_pending ON groupchat_interjections (session_id, id)
            WHERE consumed_seq IS NULL;
        """,
    ),
]

_HELD = "SELECT run_lease_held(%s, %s, %s)"
_SESSION_COLUMNS = (
    "id, topic, teams, options, status, created_by, created_at, updated_at, ended_at, stop_reason,"
    " stop_requested_by, error, summary, entries, team_messages, elapsed_s, run_ids"
)
#: Before a turn, one round trip: the operator's stop, the session's tokens so far, what is queued.
_CONTROLS = (
    "SELECT s.stop_requested_by,"
    " (SELECT coalesce(sum(u.tokens_in + u.tokens_out), 0) FROM usage_ledger u WHERE u.run_id = s.id),"
    " (SELECT coalesce(json_agg(i ORDER BY i.id), '[]') FROM (SELECT id, session_id, by, text, created_at"
    "   FROM groupchat_interjections WHERE session_id = s.id AND consumed_seq IS NULL ORDER BY id LIMIT %s) i)"
    " FROM groupchat_sessions s WHERE s.id = %s"
)
_INSERT_ENTRY = (
    "INSERT INTO groupchat_messages (session_id, seq, kind, source, text, tokens, meta, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: object) -> str:
    """AutoGen's state holds datetimes (each message's ``created_at``): as ISO text, which it reads back."""
    return json.dumps(value, default=_json_default)


def _session(row: dict[str, Any]) -> GroupChatSession:
    return GroupChatSession.model_validate(row)


class GroupChatStore:
    """Sessions, transcripts and interjections on a psycopg pool (autocommit, no prepared statements)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def _fenced(self, lease: Lease) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """One transaction (one round trip: pipelined) that commits only if ``lease`` still holds the
        session, checked first in that same transaction."""
        lease.check()
        try:
            async with self._pool.connection() as conn, conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                await cur.execute(_HELD, (lease.run_id, lease.owner, lease.token))
                yield cur
        except psycopg.Error as exc:
            if exc.sqlstate != LEASE_LOST:
                raise
            lease.lost = "another process took its lease over"
            raise LeaseLost(lost_message(lease.run_id, lease.lost)) from exc

    # -- sessions ----------------------------------------------------------------------------------

    async def create(self, session: GroupChatSession) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO groupchat_sessions (id, topic, teams, options, status, created_by, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    session.id,
                    session.topic,
                    list(session.teams),
                    Jsonb(session.options.model_dump(mode="json")),
                    session.status.value,
                    session.created_by,
                    session.created_at,
                    session.updated_at,
                ),
            )

    async def get(self, session_id: str) -> GroupChatSession | None:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_SESSION_COLUMNS} FROM groupchat_sessions WHERE id = %s", (session_id,)
            )
            row = await cur.fetchone()
        return _session(row) if row else None

    async def state(self, session_id: str) -> dict[str, Any] | None:
        """AutoGen's saved state (None before the first message)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT state FROM groupchat_sessions WHERE id = %s", (session_id,))
            row = await cur.fetchone()
        return row[0] if row and row[0] is not None else None

    async def recent(self, *, limit: int = 20, status: SessionStatus | None = None) -> list[GroupChatSession]:
        where, params = ("WHERE status = %s", (status.value, limit)) if status else ("", (limit,))
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_SESSION_COLUMNS} FROM groupchat_sessions {where} ORDER BY created_at DESC LIMIT %s", params
            )
            return [_session(r) for r in await cur.fetchall()]

    async def orphaned(self, *, limit: int = 20) -> list[str]:
        """Running sessions nobody drives: no lease, an expired one, or one of a process of this host
        that is gone (``resume`` takes them over)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT s.id, l.owner, l.expires_at > now() FROM groupchat_sessions s"
                " LEFT JOIN run_leases l ON l.run_id = s.id WHERE s.status = 'running'"
                " ORDER BY s.updated_at LIMIT %s",
                (limit,),
            )
            rows = await cur.fetchall()
        return [sid for sid, owner, live in rows if owner is None or not live or owner_is_dead(owner)]

    # -- the operator, from any process --------------------------------------------------------------

    async def interject(self, session_id: str, by: str, text: str) -> Interjection | None:
        """Queue an operator's message for the next speaker; None if the discussion is not going on."""
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "INSERT INTO groupchat_interjections (session_id, by, text, created_at)"
                " SELECT id, %s, %s, %s FROM groupchat_sessions"
                " WHERE id = %s AND status = 'running' AND stop_reason IS NULL"
                " RETURNING id, session_id, by, text, created_at, consumed_seq",
                (by, text, datetime.now(UTC), session_id),
            )
            row = await cur.fetchone()
        return Interjection.model_validate(row) if row else None

    async def request_stop(self, session_id: str, by: str) -> bool:
        """Ask the driver to stop the session (it checks between messages, and polls during one)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE groupchat_sessions SET stop_requested_by = %s, stop_requested_at = now()"
                " WHERE id = %s AND status = 'running' AND stop_requested_by IS NULL RETURNING 1",
                (by, session_id),
            )
            return await cur.fetchone() is not None

    async def stop_requested(self, session_id: str) -> str | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT stop_requested_by FROM groupchat_sessions WHERE id = %s", (session_id,))
            row = await cur.fetchone()
        return row[0] if row else None

    async def controls(self, session_id: str, *, limit: int) -> tuple[str | None, int, list[Interjection]]:
        """(who asked to stop, tokens spent so far, up to ``limit`` queued interjections, oldest first)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(_CONTROLS, (limit, session_id))
            row = await cur.fetchone()
        if row is None:
            return None, 0, []
        return row[0], int(row[1]), [Interjection.model_validate(i) for i in row[2]]

    # -- the driver, under its lease -------------------------------------------------------------

    async def commit(
        self,
        lease: Lease,
        entries: Sequence[ChatEntry],
        *,
        state: dict[str, Any],
        consumed: Sequence[tuple[int, int]],
        team_messages: int,
        elapsed_s: float,
    ) -> None:
        """Transcript lines, the AutoGen state that includes them and the interjections they
        consumed (id, seq), in one transaction."""
        async with self._fenced(lease) as cur:
            await cur.executemany(
                _INSERT_ENTRY,
                [
                    (e.session_id, e.seq, e.kind, e.source, e.text, e.tokens, Jsonb(e.meta), e.created_at)
                    for e in entries
                ],
            )
            if consumed:
                await cur.executemany(
                    "UPDATE groupchat_interjections SET consumed_seq = %s WHERE id = %s AND consumed_seq IS NULL",
                    [(seq, iid) for iid, seq in consumed],
                )
            await cur.execute(
                "UPDATE groupchat_sessions SET state = %s, entries = entries + %s, team_messages = %s,"
                " elapsed_s = %s, updated_at = now() WHERE id = %s",
                (Jsonb(state, dumps=_dumps), len(entries), team_messages, elapsed_s, lease.run_id),
            )

    async def end_discussion(self, lease: Lease, reason: StopReason, *, elapsed_s: float) -> None:
        """The discussion is over (the outcome follows; a resumed session goes straight to it)."""
        async with self._fenced(lease) as cur:
            await cur.execute(
                "UPDATE groupchat_sessions SET stop_reason = %s, elapsed_s = %s, updated_at = now()"
                " WHERE id = %s AND stop_reason IS NULL",
                (reason, elapsed_s, lease.run_id),
            )

    async def save_summary(self, lease: Lease, summary: GroupChatSummary) -> None:
        async with self._fenced(lease) as cur:
            await cur.execute(
                "UPDATE groupchat_sessions SET summary = %s, updated_at = now() WHERE id = %s",
                (Jsonb(summary.model_dump(mode="json")), lease.run_id),
            )

    async def mark_retained(self, lease: Lease) -> None:
        async with self._fenced(lease) as cur:
            await cur.execute("UPDATE groupchat_sessions SET retained = true WHERE id = %s", (lease.run_id,))

    async def retained(self, session_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT retained FROM groupchat_sessions WHERE id = %s", (session_id,))
            row = await cur.fetchone()
        return bool(row and row[0])

    async def finish(self, lease: Lease, status: SessionStatus, *, error: str | None = None) -> None:
        async with self._fenced(lease) as cur:
            await cur.execute(
                "UPDATE groupchat_sessions SET status = %s, error = %s, updated_at = now(),"
                " ended_at = CASE WHEN %s = 'ended' THEN now() ELSE ended_at END WHERE id = %s",
                (status.value, error, status.value, lease.run_id),
            )

    async def reopen(self, lease: Lease) -> None:
        """A failed session driven again is running again (its error cleared)."""
        async with self._fenced(lease) as cur:
            await cur.execute(
                "UPDATE groupchat_sessions SET status = 'running', error = NULL, updated_at = now()"
                " WHERE id = %s AND status = 'failed'",
                (lease.run_id,),
            )

    async def add_run(self, session_id: str, run_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE groupchat_sessions SET run_ids = array_append(run_ids, %s), updated_at = now() WHERE id = %s",
                (run_id, session_id),
            )

    # -- the transcript ----------------------------------------------------------------------------

    async def entries(self, session_id: str, *, after_seq: int = -1, limit: int = 1000) -> list[ChatEntry]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT session_id, seq, kind, source, text, tokens, meta, created_at FROM groupchat_messages"
                " WHERE session_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (session_id, after_seq, limit),
            )
            return [ChatEntry.model_validate(r) for r in await cur.fetchall()]

    async def interjections(self, session_id: str) -> list[Interjection]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT id, session_id, by, text, created_at, consumed_seq FROM groupchat_interjections"
                " WHERE session_id = %s ORDER BY id",
                (session_id,),
            )
            return [Interjection.model_validate(r) for r in await cur.fetchall()]
