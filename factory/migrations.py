"""Schema migrations: every package's DDL, applied once each, in order, under an advisory lock."""

from __future__ import annotations

from psycopg import AsyncConnection

from chat.tables import MIGRATIONS as CHAT
from factory.policy import MIGRATIONS as POLICY
from factory.routing_store_pg import MIGRATIONS as ROUTING
from factory.secrets_pg import MIGRATIONS as SECRETS
from factory.tokens_pg import MIGRATIONS as TOKENS
from factory.users_pg import MIGRATIONS as USERS
from factory.webhooks_pg import MIGRATIONS as WEBHOOKS
from hitl.postgres import MIGRATIONS as HITL
from memory.audit_pg import MIGRATIONS as AUDIT
from memory.bank_pg import MIGRATIONS as MEMORY
from teams.groupchat.store_pg import MIGRATIONS as GROUPCHAT
from teams.store_pg import MIGRATIONS as RUNS

MIGRATIONS: list[tuple[str, str]] = [*RUNS, *HITL, *AUDIT, *MEMORY, *ROUTING, *SECRETS, *USERS, *CHAT, *POLICY]
MIGRATIONS += GROUPCHAT  # teams/groupchat's sessions, transcripts and interjections
MIGRATIONS += TOKENS  # the API tokens of the REST API and the MCP server
MIGRATIONS += WEBHOOKS  # webhooks and their delivery log
_LOCK = 0x_FAC_7021


async def migrate(conn: AsyncConnection) -> list[str]:
    """Apply what is missing; return the names applied. Safe to run concurrently and repeatedly."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT name FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            await conn.execute(sql.encode())  # DDL text from this package, not user input
            await conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied
