"""Operator accounts in PostgreSQL (``operators``): a name, a role and a scrypt hash, never a password.

Hashing runs in a worker thread (``factory.users``) before the connection is taken, so a slow hash
neither blocks the event loop nor holds a pooled connection.
"""

from __future__ import annotations

import builtins

from psycopg_pool import AsyncConnectionPool

from factory.users import NAME_PATTERN, Role, User, check_name, check_password, check_role, matches, new_hash, taken

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0421_operators",
        """
        CREATE TABLE IF NOT EXISTS operators (
            name text PRIMARY KEY,
            role text NOT NULL CHECK (role IN ('operator', 'viewer')),
            password_hash text NOT NULL CHECK (password_hash LIKE 'scrypt$%'),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
]

_INSERT = """
    INSERT INTO operators (name, role, password_hash) VALUES (%s, %s, %s)
    ON CONFLICT (name) DO NOTHING
    RETURNING name
"""
_REPLACE = """
    INSERT INTO operators (name, role, password_hash) VALUES (%s, %s, %s)
    ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash, updated_at = now()
    RETURNING name
"""


class PostgresUserStore:
    """``UserStore`` on a psycopg pool (autocommit, as ``factory.wiring`` opens it)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def add(self, name: str, role: str, password: str, *, replace: bool = False) -> User:
        user = User(check_name(name), check_role(role))
        hashed = await new_hash(check_password(password))
        async with self._pool.connection() as conn:
            cur = await conn.execute(_REPLACE if replace else _INSERT, (user.name, user.role.value, hashed))
            if await cur.fetchone() is None:
                raise taken(name)
        return user

    async def verify(self, name: str, password: str) -> User | None:
        row = None
        if NAME_PATTERN.fullmatch(name):  # a name no account can have is not sent to the database
            async with self._pool.connection() as conn:
                cur = await conn.execute("SELECT role, password_hash FROM operators WHERE name = %s", (name,))
                row = await cur.fetchone()
        if not await matches(password, row[1] if row else None, name=name) or row is None:
            return None
        return User(name, Role(row[0]))

    async def get(self, name: str) -> User | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT role FROM operators WHERE name = %s", (check_name(name),))
            row = await cur.fetchone()
        return User(name, Role(row[0])) if row else None

    async def list(self) -> builtins.list[User]:
        async with self._pool.connection() as conn:
            cur = await conn.execute('SELECT name, role FROM operators ORDER BY name COLLATE "C"')
            rows = await cur.fetchall()
        return [User(name, Role(role)) for name, role in rows]

    async def remove(self, name: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("DELETE FROM operators WHERE name = %s RETURNING name", (check_name(name),))
            return await cur.fetchone() is not None
