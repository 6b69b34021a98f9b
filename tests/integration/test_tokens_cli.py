"""``factory tokens create|list|revoke`` through the real CLI on real PostgreSQL, and the ``TokenStore``
contract run over the in-memory twin and PostgreSQL. A raw token is printed once, by ``create``, and
stored nowhere: the database holds its SHA-256 and an 8-character prefix."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.errors import InputError, TokenNotFound
from factory.migrations import migrate
from factory.tokens import ApiToken, InMemoryTokenStore, Scope, TokenStore
from factory.tokens_pg import PostgresTokenStore
from tests.integration.cli import factory

pytestmark = pytest.mark.integration

RAW = re.compile(r"fct_[A-Za-z0-9_-]{43}")


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factory: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _rows(pg_url: str) -> list[tuple[str, str, str, str, str]]:
    """Each stored token: id, name, hash, prefix, and the whole row as PostgreSQL prints it."""
    with psycopg.connect(pg_url) as conn:
        if conn.execute("SELECT to_regclass('api_tokens')").fetchone() == (None,):
            return []
        return conn.execute(
            "SELECT id, name, token_sha256, prefix, t::text FROM api_tokens t ORDER BY created_at"
        ).fetchall()


async def _verify_async(pg_url: str, raw: str) -> ApiToken | None:
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        return await PostgresTokenStore(pool).verify(raw)


def _verify(pg_url: str, raw: str) -> ApiToken | None:
    return asyncio.run(_verify_async(pg_url, raw))


def test_create_shows_the_token_once_list_never_and_revoke_ends_it(env: dict[str, str], pg_url: str) -> None:
    made = factory("tokens", "create", "ci-bot", "--scope", "operator", "--user", "ana", env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    [raw] = RAW.findall(made.stdout)  # printed once
    assert made.stdout.count(raw[4:]) == 1 and raw not in made.stderr
    assert "created token ci-bot (tok_" in made.stdout and "scope operator, acting for ana" in made.stdout
    assert "never again" in made.stdout and "Authorization: Bearer <token>" in made.stdout
    assert "FACTORY_TOKEN" in made.stdout

    # At rest: the hash and the prefix, never the token nor its secret part.
    [(token_id, name, sha, prefix, whole_row)] = _rows(pg_url)
    assert name == "ci-bot" and sha == hashlib.sha256(raw.encode()).hexdigest() and prefix == raw[4:12]
    assert raw not in whole_row and raw[4:] not in whole_row and raw[12:] not in whole_row

    shown = [factory("tokens", "list", *flags, env=env, timeout=300) for flags in ([], ["--json"], ["--all"])]
    assert all(p.returncode == 0 for p in shown), [p.stderr for p in shown]
    assert all(raw[12:] not in p.stdout + p.stderr for p in shown)
    assert token_id in shown[0].stdout and f"fct_{prefix}..." in shown[0].stdout and "never" in shown[0].stdout
    [listed] = json.loads(shown[1].stdout)
    assert listed["id"] == token_id and listed["prefix"] == f"fct_{prefix}" and listed["user"] == "ana"
    assert listed["scope"] == "operator" and listed["active"] is True and listed["last_used_at"] is None

    verified = _verify(pg_url, raw)
    assert verified is not None and verified.id == token_id and verified.actor == "ana (token ci-bot)"
    used = json.loads(factory("tokens", "list", "--json", env=env, timeout=300).stdout)[0]
    assert used["last_used_at"] is not None

    revoked = factory("tokens", "revoke", "ci-bot", env=env, timeout=300)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked token ci-bot ({token_id})" in revoked.stdout
    assert _verify(pg_url, raw) is None
    none = factory("tokens", "list", env=env, timeout=300)
    assert none.returncode == 0 and "no active tokens" in none.stdout
    [old] = json.loads(factory("tokens", "list", "--all", "--json", env=env, timeout=300).stdout)
    assert old["id"] == token_id and old["active"] is False and old["revoked_at"] is not None
    again = factory("tokens", "revoke", token_id, env=env, timeout=300)
    assert again.returncode == 2 and f"no active token {token_id!r}" in _one_line_error(again)


def test_create_json_and_a_duplicate_active_name(env: dict[str, str], pg_url: str) -> None:
    made = factory("tokens", "create", "mcp", "--scope", "viewer", "--json", env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    data = json.loads(made.stdout)
    assert set(data) == {"id", "name", "scope", "user", "token", "created_at"}
    assert (data["name"], data["scope"], data["user"]) == ("mcp", "viewer", None) and RAW.fullmatch(data["token"])
    assert datetime.fromisoformat(data["created_at"]).tzinfo is not None

    twice = factory("tokens", "create", "mcp", "--scope", "admin", env=env, timeout=300)
    assert twice.returncode == 2
    line = _one_line_error(twice)
    assert "an active token named 'mcp' exists already" in line and "factory tokens revoke mcp" in line
    assert not RAW.search(twice.stdout + twice.stderr) and [r[0] for r in _rows(pg_url)] == [data["id"]]

    assert factory("tokens", "revoke", data["id"], env=env, timeout=300).returncode == 0
    anew = factory("tokens", "create", "mcp", "--scope", "admin", "--json", env=env, timeout=300)
    assert anew.returncode == 0, anew.stderr
    replacement = json.loads(anew.stdout)
    assert _verify(pg_url, data["token"]) is None
    verified = _verify(pg_url, replacement["token"])
    assert verified is not None and verified.scope is Scope.ADMIN and verified.actor == "token mcp"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["create", "ci-bot", "--scope", "root"], "the scope 'root' is not viewer, operator or admin"),
        (["create", "ci-bot"], "give the token's scope: --scope viewer"),
        (["create", "ci bot", "--scope", "viewer"], "the token name holds ' ' (character 3)"),
        (["create", "tok_0123456789ab", "--scope", "viewer"], "looks like a token id"),
        (["create", "ci-bot", "--scope", "viewer", "--user", "ana smith"], "the operator name holds ' '"),
        (["revoke", "no such/token"], "neither a token name nor a token id"),
    ],
)
def test_bad_input_exits_2_before_any_service_is_reached(cli_env: dict[str, str], args: list[str], said: str) -> None:
    # Services no command could reach: a refusal here was made before any connection was tried.
    env = {
        **cli_env,
        "FACTORY_DATABASE_URL": "postgresql://127.0.0.1:9/none",
        "FACTORY_REDIS_URL": "redis://127.0.0.1:9",
    }
    proc = factory("tokens", *args, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _one_line_error(proc)
    assert said in line and "PostgreSQL" not in line and "Redis" not in line


def test_revoke_of_an_unknown_token_exits_2(env: dict[str, str]) -> None:
    proc = factory("tokens", "revoke", "nobody", env=env, timeout=300)
    assert proc.returncode == 2 and "no active token 'nobody'" in _one_line_error(proc)


# --- one contract, two stores ------------------------------------------------------------------


@dataclass
class Stores:
    store: TokenStore
    later: Callable[[], Awaitable[None]]  # a minute and a second pass for every token's last use


class Clock:
    """The twin's time: a microsecond more at each reading (so creations are ordered), moved by ``later``."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


@pytest.fixture(params=["memory", "postgres"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param == "memory":
        clock = Clock()

        async def advance() -> None:
            clock.now += timedelta(seconds=61)

        yield Stores(InMemoryTokenStore(clock=clock), advance)
        return
    url = request.getfixturevalue("pg_url")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert "0701_api_tokens" in await migrate(conn)
    async with AsyncConnectionPool(
        url, min_size=1, max_size=4, kwargs={"autocommit": True, "prepare_threshold": None}
    ) as pool:

        async def age() -> None:
            async with pool.connection() as conn:
                await conn.execute("UPDATE api_tokens SET last_used_at = last_used_at - interval '61 seconds'")

        yield Stores(PostgresTokenStore(pool), age)


async def test_contract_create_and_verify(stores: Stores) -> None:
    store = stores.store
    made, raw = await store.create("ci-bot", "operator", user="ana")
    assert RAW.fullmatch(raw) and re.fullmatch(r"tok_[0-9a-f]{12}", made.id)
    assert (made.name, made.scope, made.user, made.prefix) == ("ci-bot", Scope.OPERATOR, "ana", raw[4:12])
    assert made.created_at.tzinfo is not None and made.last_used_at is None and made.active
    verified = await store.verify(raw)
    assert verified is not None and verified.id == made.id and verified.last_used_at is not None
    assert verified.actor == "ana (token ci-bot)" and verified.scope.allows(Scope.VIEWER)
    other, other_raw = await store.create("reader", Scope.VIEWER)
    assert other_raw != raw and other.id != made.id and other.user is None
    assert (await store.verify(other_raw)) is not None


async def test_contract_verify_refuses_what_is_not_an_active_token(stores: Stores) -> None:
    store = stores.store
    made, raw = await store.create("ci-bot", "viewer")
    flipped = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    for bad in ["", "fct_", raw[:-1], raw + "x", f"Bearer {raw}", raw.upper(), flipped, "fct_" + "!" * 43,
                raw[:-1] + "\x00", "x" * 100_000]:  # fmt: skip
        assert await store.verify(bad) is None
    await store.revoke(made.id)
    assert await store.verify(raw) is None


async def test_contract_use_is_noted_at_most_once_a_minute(stores: Stores) -> None:
    store = stores.store
    _, raw = await store.create("ci-bot", "admin")
    first = await store.verify(raw)
    assert first is not None and first.last_used_at is not None
    for _ in range(3):
        again = await store.verify(raw)
        assert again is not None and again.last_used_at == first.last_used_at
    await stores.later()
    later = await store.verify(raw)
    assert later is not None and later.last_used_at is not None and later.last_used_at > first.last_used_at
    [listed] = await store.list()
    assert listed.last_used_at == later.last_used_at


async def test_contract_one_active_name_list_and_revoke(stores: Stores) -> None:
    store = stores.store
    for name in ["bo", "Zed", "ana", "_x"]:
        await store.create(name, "viewer")
    assert [t.name for t in await store.list()] == ["Zed", "_x", "ana", "bo"]  # byte order, as `list` shows
    with pytest.raises(InputError, match="revoke it first"):
        await store.create("bo", "admin")
    first = await store.revoke("bo")
    assert first.name == "bo" and first.revoked_at is not None and not first.active
    second, raw = await store.create("bo", "admin")
    assert [t.name for t in await store.list()] == ["Zed", "_x", "ana", "bo"]
    everything = await store.list(include_revoked=True)
    assert [(t.name, t.active) for t in everything] == [("Zed", True), ("_x", True), ("ana", True), ("bo", False),
                                                          ("bo", True)]  # fmt: skip
    assert everything[3].id == first.id and everything[4].id == second.id
    with pytest.raises(TokenNotFound, match="no active token"):
        await store.revoke(first.id)  # revoked already
    assert (await store.revoke(second.id)).name == "bo"
    with pytest.raises(TokenNotFound):
        await store.revoke("bo")
    with pytest.raises(TokenNotFound):
        await store.revoke("tok_000000000000")
    assert await store.verify(raw) is None


async def test_contract_bad_input(stores: Stores) -> None:
    store = stores.store
    for name, scope, user in [("ci bot", "viewer", None), ("", "viewer", None), ("ci-bot", "root", None),
                              ("ci-bot", "viewer", "ana smith"), ("tok_0123456789ab", "viewer", None)]:  # fmt: skip
        with pytest.raises(InputError):
            await store.create(name, scope, user=user)
    with pytest.raises(InputError):
        await store.revoke("no such/token")
    assert await store.list(include_revoked=True) == []


async def test_contract_concurrent_creates_of_one_name_make_one(stores: Stores) -> None:
    results = await asyncio.gather(
        *(stores.store.create("ci-bot", "operator") for _ in range(4)), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, tuple)]
    assert len(made) == 1 and all(isinstance(r, InputError) for r in results if not isinstance(r, tuple))
    [(token, raw)] = made
    assert [t.id for t in await stores.store.list()] == [token.id] and await stores.store.verify(raw) is not None


async def test_postgres_verify_within_a_minute_writes_nothing(pg_url: str) -> None:
    """A busy client's requests are reads: the row keeps its version (``xmin``) between notes of use."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        store = PostgresTokenStore(pool)
        made, raw = await store.create("busy", "viewer")

        async def version() -> str:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT xmin::text FROM api_tokens WHERE id = %s", (made.id,))
                row = await cur.fetchone()
            assert row is not None
            return str(row[0])

        created = await version()
        assert await store.verify(raw) is not None
        noted = await version()
        assert noted != created  # the first use is written
        for _ in range(20):
            assert await store.verify(raw) is not None
        assert await version() == noted
