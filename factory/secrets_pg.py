"""Secrets in PostgreSQL: only the nonce and the AES-GCM ciphertext are stored, never the value.

The box (the key) is taken on first use, not when the store is built: listing and deleting need no
key, and a process that never reads a secret never creates ``secret.key`` nor fails on a bad one.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable

from psycopg_pool import AsyncConnectionPool

from routing.secrets import Sealed, SecretBox, SecretInfo, check_by, check_name, check_value

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0411_secrets",
        """
        CREATE TABLE IF NOT EXISTS secrets (
            name text PRIMARY KEY,
            nonce bytea NOT NULL CHECK (octet_length(nonce) = 12),
            ciphertext bytea NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL
        );
        """,
    ),
]


class PostgresSecretStore:
    """``SecretStore`` on a psycopg pool; ``box`` is a ``SecretBox`` or what loads one when first needed."""

    def __init__(self, pool: AsyncConnectionPool, box: SecretBox | Callable[[bool], SecretBox]) -> None:
        self._pool = pool
        self._box: SecretBox | None = box if isinstance(box, SecretBox) else None
        self._load = box if not isinstance(box, SecretBox) else None

    def _sealer(self, *, create: bool) -> SecretBox:
        """The box; the loader is told whether it may create a key (only ``put`` may)."""
        if self._box is None:
            assert self._load is not None
            self._box = self._load(create)
        return self._box

    async def put(self, name: str, value: str, *, by: str) -> None:
        check_value(check_name(name), value)
        who = check_by(by)
        sealed = self._sealer(create=True).seal(name, value)
        async with self._pool.connection() as conn:
            await conn.execute(
                """
                INSERT INTO secrets (name, nonce, ciphertext, updated_at, updated_by) VALUES (%s, %s, %s, now(), %s)
                ON CONFLICT (name) DO UPDATE SET nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext,
                    updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by
                """,
                (name, sealed.nonce, sealed.ciphertext, who),
            )

    async def get(self, name: str) -> str | None:
        check_name(name)
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT nonce, ciphertext FROM secrets WHERE name = %s", (name,))
            row = await cur.fetchone()
        if row is None:
            return None
        return self._sealer(create=False).open(name, Sealed(bytes(row[0]), bytes(row[1])))

    async def list(self) -> builtins.list[SecretInfo]:
        async with self._pool.connection() as conn:
            cur = await conn.execute('SELECT name, updated_at, updated_by FROM secrets ORDER BY name COLLATE "C"')
            rows = await cur.fetchall()
        return [SecretInfo(name, updated_at, updated_by) for name, updated_at, updated_by in rows]

    async def delete(self, name: str) -> bool:
        check_name(name)
        async with self._pool.connection() as conn:
            cur = await conn.execute("DELETE FROM secrets WHERE name = %s RETURNING name", (name,))
            return await cur.fetchone() is not None
