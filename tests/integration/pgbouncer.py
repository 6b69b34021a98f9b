"""A real PgBouncer in transaction mode in front of the tests' embedded PostgreSQL.

Installed from Debian's `pgbouncer` package when missing (as root, with apt-get); elsewhere the
fixture fails saying which package to install. It listens on a free loopback port and sends every
database name to the embedded server's socket, so a test reaches its own database through it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.debian import find_or_install


@dataclass(frozen=True)
class PgBouncer:
    host: str
    port: int

    def url(self, database_url: str) -> str:
        """``database_url``'s database, reached through this PgBouncer."""
        return f"postgresql://postgres@{self.host}:{self.port}{urlsplit(database_url).path}"


class NoPgBouncer(RuntimeError):
    pass


def pgbouncer_binary() -> str:
    """Debian's pgbouncer, installed with apt-get when missing (as root); else ``NoPgBouncer``."""
    found = find_or_install("pgbouncer", "pgbouncer")
    if found is None:
        raise NoPgBouncer("PgBouncer is not installed and could not be: install the Debian package `pgbouncer`")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_pgbouncer(database_url: str, *, pool_size: int = 4) -> Iterator[PgBouncer]:
    """PgBouncer (pool_mode = transaction) on a free loopback port, sending every database name to
    the server whose Unix socket directory ``database_url`` names (``?host=/dir``)."""
    binary = pgbouncer_binary()
    socket_dir = parse_qs(urlsplit(database_url).query)["host"][0]
    work = Path(tempfile.mkdtemp(prefix="factory-pgbouncer-"))
    port = _free_port()
    ini = work / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={socket_dir} user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = any\npool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {work}/pgbouncer.log\n"
    )
    command = [binary, str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: it runs as the owner of the server's socket
        owner = os.stat(socket_dir).st_uid
        os.chown(work, owner, -1)
        os.chown(ini, owner, -1)
        command[1:1] = ["-u", pwd.getpwuid(owner).pw_name]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(work / "stderr").open("w"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    logs = [(work / f).read_text() for f in ("stderr", "pgbouncer.log") if (work / f).exists()]
                    raise NoPgBouncer(f"PgBouncer did not start: {' '.join(logs)[-2000:]}") from None
                time.sleep(0.1)
        yield PgBouncer("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer(pg_admin_url: str) -> Iterator[PgBouncer]:
    """PgBouncer (pool_mode = transaction) for the session's embedded PostgreSQL."""
    try:
        with running_pgbouncer(pg_admin_url) as bouncer:
            yield bouncer
    except NoPgBouncer as exc:
        pytest.fail(str(exc))
