"""Driver errors of PostgreSQL and Redis become the one-line ServiceUnavailable (issue 13, item 9)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError

from factory.errors import ServiceRefused, ServiceUnavailable
from factory.service_errors import safe_url, service_error


@pytest.mark.parametrize(
    ("exc", "service"),
    [
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command\nmore"), "PostgreSQL"),
        (psycopg.OperationalError("the connection is closed"), "PostgreSQL"),
        (PoolTimeout("couldn't get a connection after 5.00 sec"), "PostgreSQL"),
        (RedisConnectionError("Connection refused"), "Redis"),
        (NoPermissionError("NOPERM this user has no permissions"), "Redis"),
        (ExceptionGroup("tasks", [ValueError("x"), psycopg.OperationalError("gone")]), "PostgreSQL"),
    ],
)
def test_driver_errors_name_their_service_on_one_line(exc: Exception, service: str) -> None:
    wrapped = service_error(exc, database_url="postgresql://u:pw@db:5432/factory", redis_url="redis://:pw@cache:6379/0")
    assert isinstance(wrapped, ServiceUnavailable)
    message = str(wrapped)
    assert message.startswith(service) and "\n" not in message and "pw" not in message
    assert ("db:5432/factory" if service == "PostgreSQL" else "cache:6379/0") in message
    assert ("FACTORY_DATABASE_URL" if service == "PostgreSQL" else "FACTORY_REDIS_URL") in message


def test_embedded_services_say_how_to_start_them() -> None:
    wrapped = service_error(psycopg.OperationalError("gone"), embedded=frozenset({"PostgreSQL"}))
    assert wrapped is not None and "factory up" in str(wrapped)


@pytest.mark.parametrize("exc", [ValueError("x"), OSError("disk"), ExceptionGroup("g", [KeyError("k")])])
def test_other_errors_are_not_service_errors(exc: Exception) -> None:
    assert service_error(exc) is None


def test_safe_url_drops_credentials() -> None:
    assert safe_url("postgresql://user:secret@host:5433/db?sslmode=require") == "postgresql://host:5433/db"


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
        psycopg.errors.RaiseException("audit entries are append-only: DELETE on audit_entries refused"),
        ResponseError("WRONGTYPE Operation against a key"),
    ],
)
def test_a_refused_command_is_not_called_an_outage(exc: Exception) -> None:
    wrapped = service_error(exc, database_url="postgresql://db/factory", redis_url="redis://cache/0")
    assert isinstance(wrapped, ServiceRefused)
    message = str(wrapped)
    assert "refused a command" in message and "start it" not in message and "\n" not in message
