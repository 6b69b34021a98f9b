"""Driver errors of PostgreSQL and Redis, as the one-line ``ServiceUnavailable`` of the error tree.

A service that dies mid-command surfaces as whatever its driver raises (``AdminShutdown``,
``PoolTimeout``, a Redis ``ConnectionError``); the front doors turn that into "which service,
how to fix". Nothing is rolled back by this: a run keeps its committed stages and resumes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from psycopg import Error as PostgresError
from psycopg import InterfaceError, OperationalError
from psycopg.errors import InsufficientPrivilege
from psycopg_pool import PoolTimeout
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from factory.errors import ServiceRefused, ServiceUnavailable

_FIX = {
    "PostgreSQL": "start it or fix FACTORY_DATABASE_URL",
    "Redis": "start it or fix FACTORY_REDIS_URL",
}
_FIX_EMBEDDED = "`factory up` starts the embedded one again"


def safe_url(url: str) -> str:
    """A URL without credentials, safe to print."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _leaves(exc: BaseException) -> list[BaseException]:
    """``exc`` itself, or the exceptions inside an exception group (depth-first, bounded by nesting)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _service(exc: BaseException) -> str | None:
    if isinstance(exc, PostgresError | PoolTimeout):  # PoolTimeout: no connection came back in time
        return "PostgreSQL"
    if isinstance(exc, RedisError):
        return "Redis"
    return None


_UNUSABLE = (
    OperationalError, InterfaceError, PoolTimeout, InsufficientPrivilege,
    RedisConnectionError, RedisTimeout, AuthenticationError, NoPermissionError,
)  # fmt: skip


def _unreachable(exc: BaseException) -> bool:
    """The service went away, cannot be reached or not as the configured user (its URL or the
    service's set-up is the fix), as opposed to a command it received and refused (a fault)."""
    return isinstance(exc, _UNUSABLE)


def service_error(
    exc: BaseException,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    embedded: frozenset[str] = frozenset(),
) -> ServiceUnavailable | ServiceRefused | None:
    """The ``ServiceUnavailable`` for a PostgreSQL or Redis driver error (or a group holding one),
    naming the service (at its URL without credentials, when given; ``embedded``: the services
    the factory started itself); None for any other error."""
    for leaf in _leaves(exc):
        service = _service(leaf)
        if service is None:
            continue
        url = database_url if service == "PostgreSQL" else redis_url
        where = f" at {safe_url(url)}" if url else ""
        if not _unreachable(leaf):  # up, and said no: starting it again is not the fix
            code = getattr(leaf, "sqlstate", None)
            return ServiceRefused(
                f"{service}{where} refused a command ({f'SQLSTATE {code}: ' if code else ''}{_first_line(leaf)});"
                " what was committed before stands; run `factory doctor`, and report it if it persists"
            )
        fix = _FIX_EMBEDDED if service in embedded else _FIX[service]
        return ServiceUnavailable(f"{service}{where} failed ({_first_line(leaf)}); {fix}")
    return None
