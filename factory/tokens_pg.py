"""API tokens in PostgreSQL (``api_tokens``): a name, a scope, a SHA-256 and a display prefix, never a token.

Every call is one autocommit statement with no session state, so the store works through PgBouncer in
transaction mode. ``verify`` is one round trip: it reads the token and, in the same statement, notes
its use only when the last one noted is a minute old or more (a row the ``UPDATE`` does not match is
not written, so a busy client causes no write per request).
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from factory.tokens import (
    TOUCH_EVERY,
    ApiToken,
    Scope,
    active_exists,
    check_name_or_id,
    check_token_name,
    check_user,
    digest,
    new_id,
    new_raw,
    not_found,
    parse_scope,
    prefix_of,
    same_digest,
    well_formed,
)

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0701_api_tokens",
        """
        CREATE TABLE IF NOT EXISTS api_tokens (
            id text PRIMARY KEY CHECK (id ~ '^tok_[0-9a-f]{12}$'),
            name text NOT NULL,
            scope text NOT NULL CHECK (scope IN ('viewer', 'operator', 'admin')),
            user_name text,
            token_sha256 text NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
            prefix text NOT NULL CHECK (char_length(prefix) = 8),
            created_at timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz,
            revoked_at timestamptz
        );
        CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
        """,
    ),
]

_COLUMNS = "id, name, scope, user_name, created_at, last_used_at, revoked_at, prefix"
_INSERT = f"""
    INSERT INTO api_tokens (id, name, scope, user_name, token_sha256, prefix) VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING
    RETURNING {_COLUMNS}
"""
# The CTE's UPDATE matches (and writes) only a use not noted for TOUCH_EVERY; the outer SELECT sees the
# row as it was before, so the new time comes from the CTE when there is one.
_VERIFY = """
    WITH touched AS (
        UPDATE api_tokens SET last_used_at = now()
        WHERE token_sha256 = %(sha)s AND revoked_at IS NULL
          AND (last_used_at IS NULL OR last_used_at <= now() - %(every)s)
        RETURNING id, last_used_at
    )
    SELECT t.id, t.name, t.scope, t.user_name, t.created_at, coalesce(u.last_used_at, t.last_used_at),
           t.revoked_at, t.prefix, t.token_sha256
    FROM api_tokens t LEFT JOIN touched u ON u.id = t.id
    WHERE t.token_sha256 = %(sha)s AND t.revoked_at IS NULL
"""
_LIST = f"""
    SELECT {_COLUMNS} FROM api_tokens WHERE %s OR revoked_at IS NULL
    ORDER BY name COLLATE "C", created_at, id
"""
# A name can never look like an id (check_token_name), so at most one active row matches.
_REVOKE = f"""
    UPDATE api_tokens SET revoked_at = now()
    WHERE (id = %(key)s OR name = %(key)s) AND revoked_at IS NULL
    RETURNING {_COLUMNS}
"""


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _token(row: tuple[Any, ...]) -> ApiToken:
    token_id, name, scope, user, created, used, revoked, prefix = row[:8]
    created_at = _utc(created)
    assert created_at is not None  # NOT NULL in the table
    return ApiToken(token_id, name, Scope(scope), user, created_at, _utc(used), _utc(revoked), prefix)


class PostgresTokenStore:
    """``TokenStore`` on a psycopg pool (autocommit, no prepared statements, as ``factory.wiring`` opens it)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create(self, name: str, scope: Scope | str, *, user: str | None = None) -> tuple[ApiToken, str]:
        name, checked, user = check_token_name(name), parse_scope(scope), check_user(user)
        raw = new_raw()
        values = (new_id(), name, checked.value, user, digest(raw), prefix_of(raw))
        async with self._pool.connection() as conn:
            cur = await conn.execute(_INSERT, values)
            row = await cur.fetchone()
        if row is None:
            raise active_exists(name)
        return _token(row), raw

    async def verify(self, raw: str) -> ApiToken | None:
        if not well_formed(raw):  # never sent to the database
            return None
        sha = digest(raw)
        async with self._pool.connection() as conn:
            cur = await conn.execute(_VERIFY, {"sha": sha, "every": TOUCH_EVERY})
            row = await cur.fetchone()
        if row is None or not same_digest(row[8], sha):
            return None
        return _token(row)

    async def list(self, *, include_revoked: bool = False) -> builtins.list[ApiToken]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(_LIST, (include_revoked,))
            rows = await cur.fetchall()
        return [_token(row) for row in rows]

    async def revoke(self, name_or_id: str) -> ApiToken:
        key = check_name_or_id(name_or_id)
        async with self._pool.connection() as conn:
            cur = await conn.execute(_REVOKE, {"key": key})
            row = await cur.fetchone()
        if row is None:
            raise not_found(name_or_id)
        return _token(row)
