"""Shared fixtures: real PostgreSQL+pgvector (embedded, one fresh database per test), real Redis
(the machine's server on a dedicated DB index, or an embedded one when none runs), in-memory twins."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from factory import services
from tests.fakeprovider import fake_provider, fake_providers  # noqa: F401  (fixtures for every test)

REDIS_TEST_DB = 13
# Importing chainlit writes .chainlit/ and .files/ into its app root (default: the working directory):
# tests that import the chat's modules get a throwaway root, never the repository.
os.environ.setdefault("CHAINLIT_APP_ROOT", tempfile.mkdtemp(prefix="chainlit-tests-"))
# The verification gate (issue 19) checks every result's files, running code in a sandbox: the tests
# of the verification gate turn it on (tests/integration/test_verification.py, test_cli_run's checked
# run); everywhere else the scripted model's placeholder files are not what a test is about.
os.environ.setdefault("FACTORY_VERIFY", "false")
REPO = Path(__file__).resolve().parents[1]
collect_ignore_glob = ["data/*"]  # test data (a delivery's own tests), run only by the checks under test


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded PostgreSQL 18 with pgvector for the whole session."""
    data = tmp_path_factory.mktemp("pg")
    return services.start_postgres(data)


@pytest.fixture(scope="session", autouse=True)
def _stop_session_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    base = tmp_path_factory.getbasetemp()
    for folder in base.iterdir():
        if (folder / "pg").exists() or (folder / "redis").exists():
            services.stop(folder)


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The machine's Redis on a dedicated DB index, else an embedded one."""
    if _tcp_open("127.0.0.1", 6379):
        return f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
    return services.start_redis(tmp_path_factory.mktemp("redis"), timeout_s=30)


@pytest.fixture
def redis_prefix(redis_base_url: str) -> Iterator[str]:
    """A key prefix of one test's own; whatever it (or a `factory` process it ran) left under it is
    removed afterwards."""
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = SyncRedis.from_url(redis_base_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def redis(redis_base_url: str, redis_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_base_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a `factory` subprocess: isolated data dir, no configured services or keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "OPENAI_", "ANTHROPIC_", "OLLAMA_"))}
    env["FACTORY_DATA_DIR"] = str(tmp_path / "data")
    env["FACTORY_VERIFY"] = os.environ["FACTORY_VERIFY"]  # off unless a test turns it on (see above)
    return env


@pytest.fixture
def env(cli_env: dict[str, str], pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    """A `factory` environment on the test's database and Redis prefix, with an empty model script."""
    script = tmp_path / "script.json"
    script.write_text("{}")
    return {
        **cli_env,
        "FACTORY_DATABASE_URL": pg_url,
        "FACTORY_REDIS_URL": redis_base_url,
        "FACTORY_REDIS_PREFIX": redis_prefix,
        "FACTORY_SCRIPTED_MODEL": str(script),
    }


def write_script(env: dict[str, str], script: dict[str, Any]) -> None:
    """What the scripted model answers in the next `factory` process (each reads it afresh)."""
    Path(env["FACTORY_SCRIPTED_MODEL"]).write_text(json.dumps(script))
