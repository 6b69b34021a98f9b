"""A real `factory api` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tests.integration.cli import FACTORY, factory

_READY = re.compile(r"api: (http://\S+)/api/v1")


@dataclass
class ApiServer:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT
    lines: list[str] = field(default_factory=list)
    closing: list[Callable[[], None]] = field(default_factory=list)  # clients to close with the server

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"


def _pump(stream: object, out: queue.Queue[str | None], keep: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        keep.append(line)
        out.put(line)
    out.put(None)


@contextlib.contextmanager
def api_server(env: dict[str, str], *args: str, timeout_s: float = 120.0) -> Iterator[ApiServer]:
    """Start `factory api --port 0 ARGS`, wait until it listens, stop it (SIGTERM) at the end."""
    proc = subprocess.Popen(
        [FACTORY, "api", "--host", "127.0.0.1", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    got: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, got, lines), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    url = None
    while url is None:
        left = deadline - time.monotonic()
        try:
            line = got.get(timeout=max(0.1, left))
        except queue.Empty:
            line = ""
        if line is None or left <= 0:
            proc.kill()
            raise AssertionError("factory api did not start:\n" + "".join(lines))
        if match := _READY.search(line or ""):
            url = match.group(1)
    server = ApiServer(proc, url, lines)
    try:
        yield server
    finally:
        for close in server.closing:
            close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def create_token(env: dict[str, str], name: str, scope: str, *extra: str) -> str:
    """A token made by the real `factory tokens create`."""
    made = factory("tokens", "create", name, "--scope", scope, "--json", *extra, env=env)
    assert made.returncode == 0, made.stderr
    token: str = json.loads(made.stdout)["token"]
    return token


def stored_tokens(env: dict[str, str], specs: dict[str, tuple[str, str, str | None]]) -> dict[str, str]:
    """Tokens made through the token store itself (one connection, no `factory` process per token):
    ``specs`` maps a key to (name, scope, user). The database is migrated first, as a start would."""
    import asyncio

    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from factory.migrations import migrate
    from factory.tokens_pg import PostgresTokenStore
    from factory.wiring import CONNECTION_KWARGS

    url = env["FACTORY_DATABASE_URL"]

    async def make() -> dict[str, str]:
        async with await AsyncConnection.connect(url) as conn:
            await migrate(conn)
        async with AsyncConnectionPool(url, min_size=1, max_size=1, kwargs=CONNECTION_KWARGS) as pool:
            store = PostgresTokenStore(pool)
            return {key: (await store.create(name, scope, user=user))[1] for key, (name, scope, user) in specs.items()}

    return asyncio.run(make())
