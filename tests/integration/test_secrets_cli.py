"""Issue 14, item 3: ``factory secrets set|list|delete`` through the real CLI on real PostgreSQL, and
one store contract run over the in-memory twin and PostgreSQL. No value ever reaches an output."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import select
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.errors import ConfigError, InputError
from factory.migrations import migrate
from factory.secrets_pg import PostgresSecretStore
from routing.secrets import KEY_FILE, MAX_VALUE_BYTES, InMemorySecretStore, SecretBox, SecretStore
from tests.integration.cli import FACTORY, factory

pytestmark = pytest.mark.integration
NAME = "OPENAI_API_KEY"


@pytest.fixture
def value() -> str:
    """A value no output could hold by chance."""
    return f"sk-test-{uuid.uuid4().hex}{uuid.uuid4().hex}"


class Outputs:
    """Every stdout and stderr a test's `factory` processes printed, to scan for the value."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def run(self, *args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = factory(*args, env=env, stdin=stdin, timeout=300)
        self.texts += [proc.stdout, proc.stderr]
        return proc

    def assert_never_shown(self, value: str) -> None:
        assert self.texts and all(value not in text for text in self.texts)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factory: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _rows(pg_url: str) -> list[tuple[str, bytes, str]]:
    """Each stored secret: its name, its ciphertext and the whole row as PostgreSQL prints it."""
    with psycopg.connect(pg_url) as conn:
        if conn.execute("SELECT to_regclass('secrets')").fetchone() == (None,):
            return []
        rows = conn.execute("SELECT name, ciphertext, s::text FROM secrets s ORDER BY name").fetchall()
    return [(r[0], bytes(r[1]), r[2]) for r in rows]


async def _stored(pg_url: str, box: SecretBox, name: str = NAME) -> str | None:
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        return await PostgresSecretStore(pool, box).get(name)


def _get(pg_url: str, box: SecretBox, name: str = NAME) -> str | None:
    return asyncio.run(_stored(pg_url, box, name))


def test_set_list_get_replace_delete(env: dict[str, str], pg_url: str, value: str) -> None:
    out = Outputs()
    data_dir = Path(env["FACTORY_DATA_DIR"])
    stored = out.run("secrets", "set", NAME, env={**env, "FACTORY_OPERATOR": "ana"}, stdin=value + "\n")
    assert stored.returncode == 0, stored.stderr
    assert f"stored secret {NAME}" in stored.stdout

    listed = out.run("secrets", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert NAME in listed.stdout and "by ana" in listed.stdout
    as_json = out.run("secrets", "list", "--json", env=env)
    [row] = json.loads(as_json.stdout)
    assert set(row) == {"name", "updated_at", "updated_by"} and (row["name"], row["updated_by"]) == (NAME, "ana")

    # At rest: only a nonce and a ciphertext, sealed with the data dir's owner-only key file.
    [(name, ciphertext, whole_row)] = _rows(pg_url)
    assert name == NAME and value.encode() not in ciphertext and value not in whole_row
    key_file = data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.lstat().st_mode) == 0o600
    assert _get(pg_url, SecretBox.load(data_dir)) == value  # the trailing newline was not stored

    replaced = out.run("secrets", "set", NAME, "--by", "bo", env=env, stdin=value + "-2\r\n")
    assert replaced.returncode == 0, replaced.stderr
    assert _get(pg_url, SecretBox.load(data_dir)) == value + "-2"
    assert json.loads(out.run("secrets", "list", "--json", env=env).stdout)[0]["updated_by"] == "bo"

    deleted = out.run("secrets", "delete", NAME, env=env)
    assert deleted.returncode == 0 and f"deleted secret {NAME}" in deleted.stdout
    assert _rows(pg_url) == [] and _get(pg_url, SecretBox.load(data_dir)) is None
    assert "no secrets stored" in out.run("secrets", "list", env=env).stdout
    again = out.run("secrets", "delete", NAME, env=env)
    assert again.returncode == 1 and f"no secret '{NAME}' is stored" in _one_line_error(again)
    out.assert_never_shown(value)


@pytest.mark.parametrize("command", ["set", "delete"])
@pytest.mark.parametrize("bad", ["1KEY", "has space", "key/with/slash", "K" * 65, "-"])
def test_bad_names_exit_2_before_anything_starts(
    env: dict[str, str], pg_url: str, value: str, command: str, bad: str
) -> None:
    out = Outputs()
    args = ["secrets", command, bad] if bad != "-" else ["secrets", command, "--", bad]
    proc = out.run(*args, env=env, stdin=value)
    assert proc.returncode == 2
    assert "starts with a letter or '_'" in _one_line_error(proc)
    assert _rows(pg_url) == [] and not (Path(env["FACTORY_DATA_DIR"]) / KEY_FILE).exists()
    out.assert_never_shown(value)


def test_a_value_on_the_command_line_is_refused_unquoted(env: dict[str, str], pg_url: str, value: str) -> None:
    out = Outputs()
    proc = out.run("secrets", "set", NAME, value, env=env)
    assert proc.returncode == 2 and "never taken from the command line" in _one_line_error(proc)
    assert _rows(pg_url) == []
    out.assert_never_shown(value)


@pytest.mark.parametrize(
    ("stdin", "why"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"   \n", "is empty"),
        (b"sk-test-\x00secret\n", "NUL character"),
        (b"sk-test-\xff\xfe-secret", "not UTF-8 text"),
        (b"sk-test-" + b"x" * MAX_VALUE_BYTES + b"\n", "longer than"),
    ],
)
def test_bad_values_exit_2_without_quoting_them(env: dict[str, str], pg_url: str, stdin: bytes, why: str) -> None:
    proc = subprocess.run(
        [FACTORY, "secrets", "set", NAME], env=env, input=stdin, capture_output=True, timeout=300, check=False
    )
    assert proc.returncode == 2
    line = proc.stderr.decode().strip()
    assert len(line.splitlines()) == 1 and line.startswith("factory: ") and why in line, line
    assert b"sk-test-" not in proc.stdout + proc.stderr
    assert _rows(pg_url) == []


def test_a_value_typed_at_a_terminal_is_never_echoed(env: dict[str, str], pg_url: str, value: str) -> None:
    master, slave = os.openpty()
    # A new session: no controlling terminal, so the prompt is on this pseudo-terminal, never the test's own.
    proc = subprocess.Popen(
        [FACTORY, "secrets", "set", NAME], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    transcript = b""
    try:
        transcript += _read_until(master, lambda seen: b"(not shown): " in seen, deadline=time.monotonic() + 120)
        os.write(master, value.encode() + b"\n")
        transcript += _read_until(master, lambda seen: False, deadline=time.monotonic() + 300)  # until it exits
        assert proc.wait(timeout=60) == 0, transcript
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    assert f"value of {NAME}".encode() in transcript and f"stored secret {NAME}".encode() in transcript
    assert value.encode() not in transcript
    assert _get(pg_url, SecretBox.load(Path(env["FACTORY_DATA_DIR"]))) == value


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


def test_a_key_from_the_environment_and_a_changed_key(env: dict[str, str], pg_url: str, value: str) -> None:
    out = Outputs()
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    keyed = {**env, "FACTORY_SECRET_KEY": key}
    assert out.run("secrets", "set", NAME, env=keyed, stdin=value).returncode == 0
    data_dir = Path(env["FACTORY_DATA_DIR"])
    assert not (data_dir / KEY_FILE).exists()  # the environment's key was used; none was made
    assert _get(pg_url, SecretBox.load(data_dir, key)) == value
    with pytest.raises(ConfigError) as excinfo:  # the key changed (here: the key file instead)
        _get(pg_url, SecretBox.load(data_dir))
    message = str(excinfo.value)
    assert f"secret '{NAME}'" in message and "the key changed" in message and value not in message

    bad = "not-a-key-" + secrets.token_hex(8)
    refused = out.run("secrets", "set", "OTHER", env={**env, "FACTORY_SECRET_KEY": bad}, stdin=value)
    assert refused.returncode == 2
    line = _one_line_error(refused)
    assert "FACTORY_SECRET_KEY" in line and "secrets.token_bytes(32)" in line and bad not in line
    # Listing needs no key: a bad one does not hide what is stored.
    listed = out.run("secrets", "list", env={**env, "FACTORY_SECRET_KEY": bad})
    assert listed.returncode == 0 and NAME in listed.stdout
    out.assert_never_shown(value)


def test_a_key_file_others_can_read_is_refused(env: dict[str, str], pg_url: str, value: str) -> None:
    out = Outputs()
    assert out.run("secrets", "set", NAME, env=env, stdin=value).returncode == 0
    key_file = Path(env["FACTORY_DATA_DIR"]) / KEY_FILE
    key_file.chmod(0o644)
    refused = out.run("secrets", "set", "OTHER", env=env, stdin=value)
    assert refused.returncode == 2 and f"chmod 600 {key_file}" in _one_line_error(refused)
    assert [r[0] for r in _rows(pg_url)] == [NAME]
    out.assert_never_shown(value)


# --- one contract, two stores ------------------------------------------------------------------


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SecretStore]:
    if request.param == "memory":
        yield InMemorySecretStore()
        return
    url = request.getfixturevalue("pg_url")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert "0411_secrets" in await migrate(conn)
    async with AsyncConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        yield PostgresSecretStore(pool, SecretBox.generate())


async def test_contract_put_get_replace(store: SecretStore, value: str) -> None:
    assert await store.get(NAME) is None
    await store.put(NAME, value, by="ana")
    assert await store.get(NAME) == value
    [first] = await store.list()
    await store.put(NAME, "ünïcødé ✓ " + value, by="bo")
    assert await store.get(NAME) == "ünïcødé ✓ " + value
    [second] = await store.list()
    assert (second.name, second.updated_by) == (NAME, "bo") and second.updated_at >= first.updated_at
    assert value not in repr(second)
    big = "é" * (MAX_VALUE_BYTES // 2)
    await store.put("BIG", big, by="ana")
    assert await store.get("BIG") == big


async def test_contract_list_is_names_in_order(store: SecretStore, value: str) -> None:
    for name in ("b", "_z", "A", "a.b-1"):
        await store.put(name, value, by="ana")
    infos = await store.list()
    assert [i.name for i in infos] == ["A", "_z", "a.b-1", "b"]
    assert all(i.updated_by == "ana" and i.updated_at.tzinfo is not None for i in infos)


async def test_contract_delete(store: SecretStore, value: str) -> None:
    await store.put(NAME, value, by="ana")
    await store.put("KEEP", value, by="ana")
    assert await store.delete(NAME) is True
    assert await store.delete(NAME) is False
    assert await store.get(NAME) is None and [i.name for i in await store.list()] == ["KEEP"]


async def test_contract_bad_input_changes_nothing(store: SecretStore, value: str) -> None:
    for call in (
        store.put("1BAD", value, by="ana"),
        store.put(NAME, "", by="ana"),
        store.put(NAME, value + "\x00", by="ana"),
        store.put(NAME, "x" * (MAX_VALUE_BYTES + 1), by="ana"),
        store.put(NAME, value, by="  "),
        store.get("bad name"),
        store.delete("bad/name"),
    ):
        with pytest.raises(InputError) as excinfo:
            await call
        assert value not in str(excinfo.value)
    assert await store.list() == []


async def test_postgres_secret_under_another_key_names_it_and_says_the_key_changed(pg_url: str, value: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        await PostgresSecretStore(pool, SecretBox.generate()).put(NAME, value, by="ana")
        with pytest.raises(ConfigError) as excinfo:
            await PostgresSecretStore(pool, SecretBox.generate()).get(NAME)
        message = str(excinfo.value)
        assert f"secret '{NAME}'" in message and "the key changed" in message and value not in message
        # A ciphertext copied onto another name does not open either, under the right key.
        store = PostgresSecretStore(pool, SecretBox.generate())
        await store.put(NAME, value, by="ana")
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO secrets (name, nonce, ciphertext, updated_by)"
                " SELECT 'MOVED', nonce, ciphertext, updated_by FROM secrets WHERE name = %s",
                (NAME,),
            )
        with pytest.raises(ConfigError, match="secret 'MOVED'"):
            await store.get("MOVED")
        assert await store.get(NAME) == value


async def test_postgres_store_loads_its_key_only_when_a_value_is_sealed_or_opened(pg_url: str, tmp_path: Path) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate(conn)
    loads: list[int] = []

    def load(create: bool) -> SecretBox:
        loads.append(1)
        return SecretBox.load(tmp_path, create=create)

    async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        store = PostgresSecretStore(pool, load)
        assert await store.list() == [] and await store.delete(NAME) is False
        assert loads == [] and not (tmp_path / KEY_FILE).exists()
        await store.put(NAME, "v", by="ana")
        assert await store.get(NAME) == "v" and loads == [1]


async def test_reading_a_secret_where_there_is_no_key_says_so_and_creates_none(pg_url: str, tmp_path: Path) -> None:
    """Only storing a secret may create the key file: a new key would open none of the stored secrets."""
    async with AsyncConnectionPool(pg_url, open=False, kwargs={"autocommit": True}) as pool:
        async with pool.connection() as conn:
            await migrate(conn)
        here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
        await PostgresSecretStore(pool, lambda create: SecretBox.load(here, create=create)).put(
            NAME, "sk-x-1234567", by="ana"
        )
        reader = PostgresSecretStore(pool, lambda create: SecretBox.load(elsewhere, create=create))
        with pytest.raises(ConfigError, match="no key"):
            await reader.get(NAME)
        assert not (elsewhere / "secret.key").exists()
