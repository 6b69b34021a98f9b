"""Chainlit's chat history in the factory's PostgreSQL, through Chainlit's ``SQLAlchemyDataLayer``.

The tables come from the factory's migrations (``chat/tables.py``). Chainlit is imported when a data
layer is built, not with this module: importing Chainlit takes seconds and writes ``.chainlit/`` and
``.files/`` under ``CHAINLIT_APP_ROOT`` (default: the working directory).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from factory.errors import ConfigError

if TYPE_CHECKING:
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
    from chainlit.data.storage_clients.base import BaseStorageClient

_DRIVER = "postgresql+psycopg"
_PSYCOPG_SCHEMES = frozenset({"postgresql", "postgres", _DRIVER})


def sqlalchemy_url(database_url: str) -> str:
    """The factory's psycopg URL as SQLAlchemy's ``postgresql+psycopg://`` URL; the rest (user,
    password, host, port, database, ``?host=/socket/dir`` and other libpq parameters) is kept as is."""
    try:
        parts = urlsplit(database_url)
    except ValueError as exc:  # e.g. an unclosed [IPv6 address]
        raise _unreadable() from exc
    if parts.scheme.lower() not in _PSYCOPG_SCHEMES:
        raise ConfigError(
            "the chat history needs a PostgreSQL URL (postgresql://user@host:port/db) and the database URL is"
            " not one (it is not quoted: it may hold a password): set FACTORY_DATABASE_URL to a postgresql://"
            " URL, or leave it unset for the embedded PostgreSQL"
        )
    return urlunsplit(parts._replace(scheme=_DRIVER))


def _unreadable() -> ConfigError:
    # The URL is not quoted: it may hold a password.
    return ConfigError(
        "the database URL is not one SQLAlchemy can read (postgresql://user:password@host:port/db,"
        " or postgresql://user@/db?host=/socket/dir for a Unix socket): check FACTORY_DATABASE_URL"
    )


def json_encode_dicts(parameters: Any) -> Any:
    """Query parameters with every ``dict`` value as JSON text. psycopg adapts no ``dict``, and Chainlit
    passes some unencoded (a user message's ``modes``, a video's ``playerConfig``, the ``feedback`` of a
    step read back and saved again): without this the whole row is lost, with only a logged warning."""
    if isinstance(parameters, dict):
        return {key: json.dumps(value) if isinstance(value, dict) else value for key, value in parameters.items()}
    if isinstance(parameters, list | tuple) and all(isinstance(p, dict) for p in parameters):
        return type(parameters)(json_encode_dicts(p) for p in parameters)
    return parameters


def data_layer(
    database_url: str,
    *,
    storage: BaseStorageClient | None = None,
    connect_timeout_s: float = 10.0,
) -> SQLAlchemyDataLayer:
    """Chainlit's data layer on the factory's PostgreSQL (``postgresql://…`` or the embedded server's
    ``postgresql://postgres:@/postgres?host=/socket/dir``). Without ``storage`` Chainlit stores no
    elements (files, images, plots): ``create_element`` returns without writing. Close it with
    ``await layer.close()`` (disposes the engine's connections)."""
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
    from sqlalchemy import event
    from sqlalchemy.exc import ArgumentError

    # libpq takes whole seconds; no server-side prepared statements (PgBouncer in transaction mode).
    connect_args = {"connect_timeout": max(1, round(connect_timeout_s)), "prepare_threshold": None}
    try:
        layer = SQLAlchemyDataLayer(
            conninfo=sqlalchemy_url(database_url),
            connect_args=connect_args,
            storage_provider=storage,
        )
    except (ArgumentError, ValueError) as exc:  # e.g. a port that is no number, or several hosts
        raise _unreadable() from exc
    # Chainlit's engine does not check a pooled connection before use: after a PostgreSQL restart the
    # first history query of each stale connection failed. The same engine, pinging first.
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import sessionmaker

    engine = create_async_engine(
        sqlalchemy_url(database_url),
        connect_args=connect_args,
        pool_pre_ping=True,
    )
    old, layer.engine = layer.engine, engine
    layer.async_session = sessionmaker(bind=engine, expire_on_commit=False, class_=AsyncSession)  # type: ignore[call-overload]
    old.sync_engine.dispose()  # it never connected
    event.listen(layer.engine.sync_engine, "before_cursor_execute", _encode_dicts, retval=True)
    return layer


def _encode_dicts(
    conn: object, cursor: object, statement: str, parameters: Any, context: object, executemany: bool
) -> tuple[str, Any]:
    return statement, json_encode_dicts(parameters)
