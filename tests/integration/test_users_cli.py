"""``factory users add|list|remove`` through the real CLI on real PostgreSQL, and the login check
(``UserStore`` contract) run over the in-memory twin and PostgreSQL. No password or hash is ever shown."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.errors import InputError
from factory.migrations import migrate
from factory.users import InMemoryUserStore, Role, User, UserStore
from factory.users_pg import PostgresUserStore
from tests.integration.cli import FACTORY, factory

pytestmark = pytest.mark.integration


@pytest.fixture
def password() -> str:
    """A password no output could hold by chance."""
    return f"pw-{uuid.uuid4().hex}"


class Outputs:
    """Every stdout and stderr a test's `factory` processes printed, to scan for secrets."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def run(self, *args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = factory(*args, env=env, stdin=stdin, timeout=300)
        self.texts += [proc.stdout, proc.stderr]
        return proc

    def assert_never_shown(self, *secrets: str) -> None:
        assert self.texts and all(s not in text for s in secrets for text in self.texts)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factory: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _rows(pg_url: str) -> list[tuple[str, str, str, datetime, datetime, str]]:
    """Each stored operator: name, role, hash, created, updated, and the whole row as PostgreSQL prints it."""
    with psycopg.connect(pg_url) as conn:
        if conn.execute("SELECT to_regclass('operators')").fetchone() == (None,):
            return []
        return conn.execute(
            "SELECT name, role, password_hash, created_at, updated_at, o::text FROM operators o ORDER BY name"
        ).fetchall()


async def _verify_async(pg_url: str, name: str, password: str) -> User | None:
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        return await PostgresUserStore(pool).verify(name, password)


def _verify(pg_url: str, name: str, password: str) -> User | None:
    return asyncio.run(_verify_async(pg_url, name, password))


def test_add_list_refuse_replace_remove(env: dict[str, str], pg_url: str, password: str) -> None:
    out = Outputs()
    added = out.run("users", "add", "ana@example.com", "--role", "operator", env=env, stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    assert "operator ana@example.com stored, role operator" in added.stdout

    listed = out.run("users", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"name": "ana@example.com", "role": "operator"}]
    text = out.run("users", "list", env=env)
    assert text.returncode == 0 and "ana@example.com" in text.stdout and "operator" in text.stdout

    # At rest: a scrypt hash with its parameters, never the password (the trailing newline was not part of it).
    [(name, role, hashed, created, updated, whole_row)] = _rows(pg_url)
    assert (name, role) == ("ana@example.com", "operator")
    assert hashed.startswith("scrypt$32768$8$1$") and password not in whole_row
    assert _verify(pg_url, "ana@example.com", password) == User("ana@example.com", Role.OPERATOR)
    assert _verify(pg_url, "ana@example.com", password + "\n") is None

    again = out.run("users", "add", "ana@example.com", "--role", "viewer", env=env, stdin="other password\n")
    assert again.returncode == 2
    line = _one_line_error(again)
    assert "'ana@example.com' exists already" in line and "--replace" in line
    assert _rows(pg_url)[0][:3] == (name, role, hashed)  # nothing changed

    new_password = password + "-2"
    replaced = out.run("users", "add", "ana@example.com", "--role", "viewer", "--replace", env=env, stdin=new_password)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(out.run("users", "list", "--json", env=env).stdout) == [
        {"name": "ana@example.com", "role": "viewer"}
    ]
    [(_, role2, hashed2, created2, updated2, _)] = _rows(pg_url)
    assert role2 == "viewer" and hashed2 != hashed and created2 == created and updated2 > updated
    assert _verify(pg_url, "ana@example.com", password) is None
    assert _verify(pg_url, "ana@example.com", new_password) == User("ana@example.com", Role.VIEWER)

    removed = out.run("users", "remove", "ana@example.com", env=env)
    assert removed.returncode == 0 and "removed operator ana@example.com" in removed.stdout
    assert _rows(pg_url) == [] and _verify(pg_url, "ana@example.com", new_password) is None
    assert "no operators" in out.run("users", "list", env=env).stdout
    assert json.loads(out.run("users", "list", "--json", env=env).stdout) == []
    gone = out.run("users", "remove", "ana@example.com", env=env)
    assert gone.returncode == 1 and "no operator 'ana@example.com'" in _one_line_error(gone)
    out.assert_never_shown(password, new_password, hashed, hashed2)


@pytest.mark.parametrize(
    ("args", "stdin", "said"),
    [
        (["ana", "--role", "admin"], "a good password", "'admin' is not operator or viewer: write --role operator"),
        (["ana"], "a good password", "give the operator's role: --role operator"),
        (["ana", "--role", "operator"], "short\n", "has 5 characters; give at least 8"),
        (["ana", "--role", "operator"], "", "has 0 characters; give at least 8"),
        (["ana", "--role", "operator"], "x" * 1025, "give at most 1024"),
        (["ana", "--role", "operator"], "good pass\x00word", "NUL"),
        (["ana", "--role", "operator"], "first line\nsecond line\n", "more than one line"),
        (["ana smith", "--role", "operator"], "a good password", "' ' (character 4)"),
        (["ana/../b", "--role", "operator"], "a good password", "'/' (character 4)"),
        (["a" * 65, "--role", "operator"], "a good password", "has 65 characters"),
        (["ana", "--role", "operator", "a-password-in-argv"], "", "never taken from the command line"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_stores_nothing(
    env: dict[str, str], pg_url: str, args: list[str], stdin: str, said: str
) -> None:
    proc = factory("users", "add", *args, env=env, stdin=stdin, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_line_error(proc)
    assert said in line, line
    for secret in ("good pass", "a-password-in-argv", "second line"):
        assert secret not in proc.stdout + proc.stderr
    assert _rows(pg_url) == []


def test_remove_refuses_a_bad_name_with_exit_2(env: dict[str, str]) -> None:
    proc = factory("users", "remove", "no such/name", env=env, timeout=300)
    assert proc.returncode == 2 and "' ' (character 3)" in _one_line_error(proc)


def _add_at_a_terminal(env: dict[str, str], typed: list[str]) -> tuple[int, bytes]:
    """Run ``users add bo --role operator`` on a pseudo-terminal, typing each of ``typed`` at a prompt."""
    master, slave = os.openpty()
    # A new session: no controlling terminal, so the prompts are on this pseudo-terminal, never the test's own.
    proc = subprocess.Popen(
        [FACTORY, "users", "add", "bo", "--role", "operator"],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    transcript = b""
    try:
        for answer, prompt in zip(typed, [b"(not shown): ", b"again: "], strict=True):
            transcript += _read_until(master, _shows(prompt), deadline=time.monotonic() + 120)
            os.write(master, answer.encode() + b"\n")
        transcript += _read_until(master, lambda seen: False, deadline=time.monotonic() + 300)  # until it exits
        return proc.wait(timeout=60), transcript
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)


def _shows(prompt: bytes) -> Callable[[bytes], bool]:
    return lambda seen: prompt in seen


def _read_until(fd: int, done: Callable[[bytes], bool], *, deadline: float) -> bytes:
    """What ``fd`` gives until ``done(seen)``, its end (the other side closed) or the deadline."""
    seen = b""
    while time.monotonic() < deadline and not done(seen):
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every holder of the terminal's other side has closed it
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_a_password_typed_twice_at_a_terminal_is_never_echoed(env: dict[str, str], pg_url: str, password: str) -> None:
    code, transcript = _add_at_a_terminal(env, [password, password])
    assert code == 0, transcript
    assert b"password for bo" in transcript and b"operator bo stored" in transcript
    assert password.encode() not in transcript
    assert _verify(pg_url, "bo", password) == User("bo", Role.OPERATOR)


def test_two_different_passwords_at_a_terminal_store_nothing(env: dict[str, str], pg_url: str, password: str) -> None:
    code, transcript = _add_at_a_terminal(env, [password, password + "x"])
    assert code == 2 and b"the two passwords differ" in transcript, transcript
    assert password.encode() not in transcript
    assert _rows(pg_url) == []


# --- one contract, two stores ------------------------------------------------------------------


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[UserStore]:
    if request.param == "memory":
        yield InMemoryUserStore()
        return
    url = request.getfixturevalue("pg_url")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert "0421_operators" in await migrate(conn)
    async with AsyncConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        yield PostgresUserStore(pool)


async def test_contract_login(store: UserStore, password: str) -> None:
    assert await store.verify("ana", password) is None and await store.get("ana") is None
    assert await store.add("ana", "operator", password) == User("ana", Role.OPERATOR)
    assert await store.verify("ana", password) == User("ana", Role.OPERATOR)
    assert await store.verify("ana", password.upper()) is None
    assert await store.verify("Ana", password) is None  # names are exact
    assert await store.verify("no such/name", password) is None  # never raises at login
    assert await store.verify("ana", "x" * 5000) is None
    assert await store.get("ana") == User("ana", Role.OPERATOR)


async def test_contract_add_replace_list_remove(store: UserStore, password: str) -> None:
    for name in ["bo", "Zed", "ana", "_x"]:
        await store.add(name, "viewer", password)
    assert [u.name for u in await store.list()] == ["Zed", "_x", "ana", "bo"]  # byte order, as `list` shows
    with pytest.raises(InputError, match="exists already"):
        await store.add("bo", "operator", "another password")
    assert await store.verify("bo", password) == User("bo", Role.VIEWER)
    await store.add("bo", "operator", "another password", replace=True)
    assert await store.verify("bo", "another password") == User("bo", Role.OPERATOR)
    assert await store.verify("bo", password) is None
    assert await store.remove("bo") is True and await store.remove("bo") is False
    assert await store.verify("bo", "another password") is None
    assert [u.name for u in await store.list()] == ["Zed", "_x", "ana"]
    with pytest.raises(InputError):
        await store.remove("bad name")
    with pytest.raises(InputError):
        await store.add("new", "admin", password)


async def test_concurrent_adds_of_one_name_store_one(store: UserStore, password: str) -> None:
    results = await asyncio.gather(
        *(store.add("ana", "operator", f"{password}-{i}") for i in range(4)), return_exceptions=True
    )
    assert sum(isinstance(r, User) for r in results) == 1
    assert all(isinstance(r, InputError) for r in results if not isinstance(r, User))
    [winner] = [i for i, r in enumerate(results) if isinstance(r, User)]
    assert await store.verify("ana", f"{password}-{winner}") == User("ana", Role.OPERATOR)
