"""The scratch database of the ``sql-apply`` check (issue 19): a team's SQL applied to a schema of
its own in the factory's PostgreSQL, as an unprivileged role, and dropped afterwards.

What keeps hostile SQL inside its schema is PostgreSQL's own privilege system, not parsing:

- the SQL runs on a separate connection that logs in as ``role`` (default ``factory_scratch``): no
  superuser, no CREATEROLE/CREATEDB/REPLICATION/BYPASSRLS, member of no role (so ``SET ROLE``
  leads nowhere and ``RESET ROLE`` leads back to itself), no CREATE on the database or on any schema
  but its scratch schema, no privilege on any table of the factory's. The role is created when
  missing and the connecting user may create roles; an existing role that breaks one of these rules
  is refused (:class:`~factory.errors.ConfigError`), nothing applied;
- the scratch schema ``verify_<hex>`` belongs to the connecting (admin) user, the role only has
  USAGE and CREATE on it: the SQL cannot drop, rename or give away the schema it runs in;
- a client-side deadline stops SQL that lifts its own ``statement_timeout``: its statement is
  cancelled and its backend terminated (the admin must be a superuser or a member of
  pg_signal_backend for that), then the schema dropped (CASCADE) — always, in a ``finally``.

When the admin URL carries a password, the role's is derived from it (HMAC), set on each use.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from factory.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)

ROLE = "factory_scratch"
FORBIDDEN_ATTRIBUTES = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")
_OTHER_SCHEMAS = """
SELECT nspname FROM pg_namespace
WHERE has_schema_privilege(%(role)s, oid, 'CREATE')
  AND nspname NOT LIKE 'verify\\_%%' AND nspname NOT LIKE 'pg\\_temp\\_%%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
LIMIT 5
"""
_TABLES = """
SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND n.nspname NOT LIKE 'verify\\_%%'
  AND has_table_privilege(%(role)s, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
LIMIT 5
"""


class PostgresScratchDatabase:
    """:class:`~verify.base.ScratchDatabase` over the PostgreSQL at ``dsn`` (its user must be able to
    create schemas, and the role when it is missing)."""

    def __init__(self, dsn: str, *, role: str = ROLE, connect_timeout_s: float = 10.0) -> None:
        if not role.isidentifier() or role != role.lower():
            raise ConfigError(f"scratch role {role!r} must be a lower-case identifier")
        self._dsn = dsn
        self._role = role
        self._connect_timeout_s = connect_timeout_s
        password = conninfo_to_dict(dsn).get("password")
        self._password = _derived(str(password), role) if password else None
        self._role_dsn = make_conninfo(dsn, user=role, password=self._password)  # None: no password

    async def apply(self, sql_text: str, *, timeout_s: float) -> str | None:
        """Apply ``sql_text`` in a fresh scratch schema as the role; PostgreSQL's error text, or None.

        Raises ``ServiceUnavailable`` when PostgreSQL cannot be reached and ``ConfigError`` when the
        role cannot be had or has more rights than a scratch role may."""
        schema = f"verify_{secrets.token_hex(8)}"
        async with await self._connect(self._dsn, "the factory's database") as admin:
            await self._ensure_role(admin)
            await admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            try:
                grant = sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}")
                await admin.execute(grant.format(sql.Identifier(schema), sql.Identifier(self._role)))
                return await self._apply_as_role(admin, schema, sql_text, timeout_s)
            finally:
                await self._drop(admin, schema)

    async def _connect(self, dsn: str, what: str) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout_s))
            )
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(f"cannot connect to {what} for the SQL check: {exc}".strip()) from exc

    async def _apply_as_role(
        self, admin: psycopg.AsyncConnection[Any], schema: str, sql_text: str, timeout_s: float
    ) -> str | None:
        try:
            conn = await self._connect(self._role_dsn, f"PostgreSQL as the scratch role {self._role!r}")
        except ServiceUnavailable as exc:
            raise ConfigError(f"{exc}; the role must be allowed to log in (pg_hba.conf) and to CONNECT") from exc
        pid = conn.info.backend_pid
        try:
            millis = max(1, int(timeout_s * 1000))
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            await conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(millis)))
            await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(millis)))
            try:
                # no parameters: sent as a simple query, so a file of many statements runs as written
                await asyncio.wait_for(conn.execute(sql_text.encode()), timeout_s)
            except psycopg.Error as exc:
                return str(exc).strip() or type(exc).__name__
            except TimeoutError:
                return f"the SQL did not finish in {timeout_s:g} s (statement timeout)"
            return None
        finally:
            await self._end(admin, conn, pid)

    async def _end(self, admin: psycopg.AsyncConnection[Any], conn: psycopg.AsyncConnection[Any], pid: int) -> None:
        """Close the role's session; one still busy (a deadline passed) is cancelled by itself (always
        allowed) and terminated by the admin (a superuser, or a member of pg_signal_backend)."""
        idle = (psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INERROR)
        if not conn.closed and conn.info.transaction_status not in idle:
            try:
                await conn.cancel_safe(timeout=5.0)
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("could not cancel the scratch role's statement (backend %s): %s", pid, exc)
            try:
                await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            except psycopg.Error as exc:
                log.warning("could not terminate the scratch role's backend %s: %s", pid, exc)
        try:
            await asyncio.wait_for(conn.close(), 5.0)
        except (TimeoutError, psycopg.Error):
            log.warning("the scratch role's connection (backend %s) did not close cleanly", pid)

    async def _drop(self, admin: psycopg.AsyncConnection[Any], schema: str) -> None:
        try:
            await admin.execute("SET lock_timeout = '10s'")
            await admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        except psycopg.Error as exc:
            log.error("scratch schema %s was not dropped: %s", schema, exc)

    async def _ensure_role(self, admin: psycopg.AsyncConnection[Any]) -> None:
        """The role exists with no more rights than a scratch role may have, else ``ConfigError``."""
        role = sql.Identifier(self._role)
        attributes = await self._attributes(admin)
        if attributes is None:
            if not await self._may_create_roles(admin):
                raise ConfigError(
                    f"the scratch role {self._role!r} does not exist and the database user may not create roles:"
                    f" create it once (CREATE ROLE {self._role} LOGIN) or connect as a user with CREATEROLE"
                )
            try:
                await admin.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
                    ).format(role)
                )
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass  # another process created it meanwhile
            attributes = await self._attributes(admin)
            if attributes is None:
                raise ConfigError(f"the scratch role {self._role!r} could not be created")
        granted = [name for name, value in attributes.items() if value and name in FORBIDDEN_ATTRIBUTES]
        if granted or not attributes["rolcanlogin"]:
            raise ConfigError(
                f"the scratch role {self._role!r} must be a plain LOGIN role; it has "
                f"{', '.join(granted) or 'no LOGIN'}: fix the role or configure another"
            )
        if self._password and await self._may_create_roles(admin):
            await admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(self._password)))
        try:
            database = sql.Identifier(admin.info.dbname)
            await admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
        except psycopg.Error:
            pass  # not the database's owner: PUBLIC's CONNECT (the default) has to do
        await self._refuse_rights(admin)

    async def _attributes(self, admin: psycopg.AsyncConnection[Any]) -> dict[str, bool] | None:
        columns = ", ".join((*FORBIDDEN_ATTRIBUTES, "rolcanlogin"))
        cur = await admin.execute(f"SELECT {columns} FROM pg_roles WHERE rolname = %s", [self._role])
        row = await cur.fetchone()
        return None if row is None else dict(zip((*FORBIDDEN_ATTRIBUTES, "rolcanlogin"), row, strict=True))

    async def _may_create_roles(self, admin: psycopg.AsyncConnection[Any]) -> bool:
        cur = await admin.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _refuse_rights(self, admin: psycopg.AsyncConnection[Any]) -> None:
        """``ConfigError`` when the role could reach beyond its scratch schema."""
        args = {"role": self._role}
        problems: list[str] = []
        cur = await admin.execute(
            "SELECT string_agg(b.rolname, ', ') FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid"
            " JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %(role)s",
            args,
        )
        row = await cur.fetchone()
        if row and row[0]:
            problems.append(f"it is a member of {row[0]} (SET ROLE would reach their rights)")
        cur = await admin.execute("SELECT has_database_privilege(%(role)s, current_database(), 'CREATE')", args)
        row = await cur.fetchone()
        if row and row[0]:
            problems.append("it may CREATE in the database (new schemas)")
        cur = await admin.execute(_OTHER_SCHEMAS, args)
        schemas = [r[0] for r in await cur.fetchall()]
        if schemas:
            problems.append(f"it may CREATE in the schemas {', '.join(schemas)} (REVOKE CREATE ... FROM PUBLIC)")
        cur = await admin.execute(_TABLES, args)
        tables = [r[0] for r in await cur.fetchall()]
        if tables:
            problems.append(f"it has privileges on the tables {', '.join(tables)}")
        if problems:
            raise ConfigError(
                f"refusing to apply SQL as the scratch role {self._role!r}: {'; '.join(problems)}; revoke those"
                " rights or configure another role"
            )


def _derived(password: str, role: str) -> str:
    return hmac.new(password.encode(), f"factory scratch role {role}".encode(), hashlib.sha256).hexdigest()
