"""Checks that run what teams produce, on the real things: Python imports and pytest inside the
real bubblewrap sandbox, SQL on a real PostgreSQL (the machine's on 127.0.0.1:5432 and the embedded
one the factory starts by default) as the unprivileged scratch role."""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from factory.scratch_pg import PostgresScratchDatabase
from tests.debian import ensure_debian
from verify.base import CheckReport, Outcome, SandboxPolicy, Workspace
from verify.registry import checks_for
from verify.runner import run_checks, write_workspace

pytestmark = pytest.mark.integration

SERVICE = '''"""A tiny URL shortener over the standard library's HTTP server."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LINKS: dict[str, str] = {}


def shorten(url: str) -> str:
    """Store the URL and return its code."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    code = format(len(LINKS) + 1, "x")
    LINKS[code] = url
    return code


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            code = shorten(body["url"])
        except ValueError as exc:
            return self._send(400, {"error": str(exc)})
        self._send(201, {"code": code})

    def do_GET(self) -> None:
        target = LINKS.get(self.path.lstrip("/"))
        if target is None:
            return self._send(404, {"error": "no such link"})
        self.send_response(302)
        self.send_header("Location", target)
        self.end_headers()

    def _send(self, status: int, payload: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def make_server(port: int = 0) -> ThreadingHTTPServer:
    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


if __name__ == "__main__":
    make_server(8000).serve_forever()
'''

TESTS = """import http.client
import json
import threading

import pytest

from backend.app import make_server, shorten


@pytest.fixture
def server():
    srv = make_server(0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_port
    srv.shutdown()
    srv.server_close()


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=json.dumps(body) if body is not None else None)
    response = conn.getresponse()
    return response.status, response.getheader("Location"), response.read()


def test_create_and_follow(server):
    status, _, body = request(server, "POST", "/links", {"url": "https://example.org/a"})
    assert status == 201
    code = json.loads(body)["code"]
    status, location, _ = request(server, "GET", "/" + code)
    assert (status, location) == (302, "https://example.org/a")


def test_bad_url_refused(server):
    status, _, body = request(server, "POST", "/links", {"url": "ftp://example.org"})
    assert status == 400 and "http" in json.loads(body)["error"]


def test_unknown_code(server):
    assert request(server, "GET", "/nope")[0] == 404


def test_shorten_validates():
    with pytest.raises(ValueError):
        shorten("example.org")
"""

FAILING = """from backend.app import shorten


def test_passes():
    assert shorten("https://a.example") != ""


def test_wrong_expectation():
    assert shorten("https://b.example") == "zz"


def test_code_under_test_raises():
    assert shorten("mailto:someone@example.org")
"""


@pytest.fixture
def scratch() -> Iterator[Callable[[], Path]]:
    """Makes scratch roots the sandbox's user may reach: each one ``tempfile.mkdtemp()`` under /tmp
    (a folder inside one, or pytest's tmp_path, is not searchable by others)."""
    made: list[Path] = []

    def new() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="verify-exec-")))
        return made[-1]

    yield new
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox() -> object:
    from verify.sandbox import default_sandbox, sandbox_available

    ensure_debian("bwrap", "bubblewrap")  # installed here when missing (as root), else the test says what to install
    missing = sandbox_available()
    if missing:
        pytest.fail(f"bubblewrap is installed but cannot make a sandbox here: {missing}")
    return default_sandbox()


def stage(
    root: Path, targets: Mapping[str, str], others: Mapping[str, str], sandbox: object, **policy: object
) -> Workspace:
    write_workspace(root, {**others, **targets})
    return Workspace(
        root=root,
        targets=list(targets),
        others=list(others),
        policy=SandboxPolicy(**policy),  # type: ignore[arg-type]
        sandbox=sandbox,  # type: ignore[arg-type]
    )


def by_check(reports: list[CheckReport]) -> dict[str, CheckReport]:
    return {r.check: r for r in reports}


# ---------------------------------------------------------------- python-import and pytest in the sandbox


async def test_a_correct_service_and_its_passing_tests_pass(scratch: Callable[[], Path], sandbox: object) -> None:
    backend = stage(scratch(), {"backend/app.py": SERVICE, "backend/NOTES.md": "run it"}, {}, sandbox)
    reports = by_check(
        await run_checks(checks_for(["python-syntax", "python-import", "ruff", "bandit", "secrets"]), backend)
    )
    assert {name: r.outcome for name, r in reports.items()} == {
        "python-syntax": Outcome.PASSED,
        "python-import": Outcome.PASSED,
        "ruff": Outcome.PASSED,
        "bandit": Outcome.PASSED,
        "secrets": Outcome.PASSED,
    }, reports
    qa = stage(scratch(), {"qa/test_app.py": TESTS, "qa/test-plan.md": "plan"}, {"backend/app.py": SERVICE}, sandbox)
    (report,) = await run_checks(checks_for(["pytest"]), qa)
    assert report.outcome is Outcome.PASSED, report
    assert report.tests is not None and (report.tests.passed, report.tests.failed, report.tests.errors) == (4, 0, 0)
    assert report.artifacts == ["qa/test_app.py"] and report.findings == []
    assert not list(qa.root.glob(".verify-*"))  # the check's own files are gone


async def test_failing_tests_fail_with_counts_and_findings_routed_to_the_failing_file(
    scratch: Callable[[], Path], sandbox: object
) -> None:
    qa = stage(scratch(), {"qa/test_app.py": FAILING}, {"backend/app.py": SERVICE}, sandbox)
    (report,) = await run_checks(checks_for(["pytest"]), qa)
    assert report.outcome is Outcome.FAILED
    assert report.tests is not None and (report.tests.passed, report.tests.failed, report.tests.errors) == (1, 2, 0)
    found = {f.message.split(" ")[0]: f for f in report.findings}
    wrong = found["qa/test_app.py::test_wrong_expectation"]
    assert wrong.artifact == "qa/test_app.py" and "AssertionError" in wrong.message and wrong.line == 9
    raised = found["qa/test_app.py::test_code_under_test_raises"]
    assert raised.artifact == "backend/app.py"  # the owner of the file the traceback ends in
    assert (
        "ValueError: url must start with http" in raised.message
        and "failed in backend/app.py line 12" in raised.message
    )


async def test_a_collection_error_and_no_tests(scratch: Callable[[], Path], sandbox: object) -> None:
    broken = stage(
        scratch(), {"qa/test_app.py": "from backend.app import missing_name\n"}, {"backend/app.py": SERVICE}, sandbox
    )
    (report,) = await run_checks(checks_for(["pytest"]), broken)
    assert report.outcome is Outcome.FAILED and report.tests is not None and report.tests.errors == 1
    assert report.findings[0].message.startswith("qa/test_app.py ERROR: ImportError: cannot import name 'missing_name'")
    empty = stage(scratch(), {"qa/test_app.py": "X = 1\n"}, {}, sandbox)
    (report,) = await run_checks(checks_for(["pytest"]), empty)
    assert report.outcome is Outcome.FAILED and "no tests were collected" in report.findings[0].message


async def test_import_failures_are_found_and_attributed(scratch: Callable[[], Path], sandbox: object) -> None:
    files = {
        "backend/app.py": "from backend.models import Link\n",
        "backend/models.py": "import json\nLink = json.loads('{not json')\n",
        "backend/needs.py": "import flask_that_is_not_installed\n",
    }
    backend = stage(scratch(), files, {}, sandbox)
    (report,) = await run_checks(checks_for(["python-import"]), backend)
    assert report.outcome is Outcome.FAILED
    messages = {f.message.split(" ")[0]: f for f in report.findings}
    assert set(messages) == {"backend/app.py", "backend/models.py", "backend/needs.py"}
    assert messages["backend/app.py"].artifact == "backend/models.py"  # it fails inside models.py, line 2
    assert messages["backend/app.py"].line == 2 and "JSONDecodeError" in messages["backend/app.py"].message
    assert "No module named 'flask_that_is_not_installed'" in messages["backend/needs.py"].message


async def test_code_that_hangs_is_stopped_by_the_sandbox(scratch: Callable[[], Path], sandbox: object) -> None:
    files = {
        "backend/app.py": "import time\nwhile True:\n    time.sleep(0.1)\n",
        "qa/test_hang.py": "import time\n\n\ndef test_forever():\n    time.sleep(600)\n",
    }
    ws = stage(scratch(), files, {}, sandbox, wall_s=2.0, cpu_s=5)
    reports = by_check(await run_checks(checks_for(["python-import", "pytest"]), ws, timeout_s=60))
    assert reports["python-import"].outcome is Outcome.FAILED
    assert "did not finish in 2 s" in reports["python-import"].findings[0].message
    assert "__main__" in reports["python-import"].findings[0].message
    assert (
        reports["pytest"].outcome is Outcome.FAILED
        and "the tests were stopped" in reports["pytest"].findings[0].message
    )


async def test_the_policy_can_forbid_running_anything(scratch: Callable[[], Path], sandbox: object) -> None:
    ws = stage(
        root := scratch(),
        {"qa/test_app.py": "import os\nos.makedirs('ran')\n\ndef test_x():\n    pass\n"},
        {},
        sandbox,
        execute=False,
    )
    reports = await run_checks(checks_for(["python-import", "pytest"]), ws)
    assert {r.outcome for r in reports} == {Outcome.SKIPPED}
    assert not (root / "ran").exists()


# ---------------------------------------------------------------- sql-apply on a real PostgreSQL

GOOD_DDL = """
CREATE TABLE links (
    id bigserial PRIMARY KEY,
    code text NOT NULL UNIQUE,
    target_url text NOT NULL CHECK (target_url ~ '^https?://'),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- serves GET /{code}
CREATE INDEX links_created_at ON links (created_at);
CREATE TABLE clicks (
    id bigserial PRIMARY KEY,
    link_id bigint NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    clicked_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE clicks IS 'one row per redirect';
"""


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Scratch:
    url: str  # a fresh database of the test's own, with the factory's table in public
    role: str  # a scratch role of the test's own (roles are the whole server's)
    admin: str  # the connecting user

    def database(self) -> PostgresScratchDatabase:
        return PostgresScratchDatabase(self.url, role=self.role)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture(params=["machine", "embedded"])
def pg(request: pytest.FixtureRequest) -> Iterator[Scratch]:
    if request.param == "machine":
        if not _tcp_open("127.0.0.1", 5432):
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        admin_url = "postgresql://root@127.0.0.1:5432/postgres"
    else:
        admin_url = request.getfixturevalue("pg_admin_url")
    name, role = f"verify_t_{uuid.uuid4().hex[:10]}", f"scratch_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        admin = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
    url = _with_db(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE factory_runs (id int PRIMARY KEY, note text); INSERT INTO factory_runs VALUES (1, 'keep')"
        )
    try:
        yield Scratch(url, role, admin)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def sql_stage(
    root: Path, files: Mapping[str, str], database: PostgresScratchDatabase, wall_s: float = 10.0
) -> Workspace:
    write_workspace(root, files)
    return Workspace(root=root, targets=list(files), policy=SandboxPolicy(wall_s=wall_s), database=database)


def untouched(pg: Scratch) -> None:
    """The factory's table and schema as they were; no scratch schema and no session of the role left."""
    assert pg.query("SELECT id, note FROM public.factory_runs") == [(1, "keep")]
    assert pg.query(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind = 'r'"
    ) == [("factory_runs",)]
    assert pg.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'verify\\_%'") == []
    assert pg.query(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{pg.role}'") == [(0,)]
    assert pg.query(f"SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = '{pg.role}'") == [
        (False, False, False)
    ]


async def test_good_ddl_passes_and_bad_sql_fails_with_postgresql_message(pg: Scratch, tmp_path: Path) -> None:
    files = {
        "database/schema.sql": GOOD_DDL,
        "database/broken.sql": "CREATE TABLE a (\n  id int,\n  z nosuchtype\n);\n",
    }
    (report,) = await run_checks(checks_for(["sql-apply"]), sql_stage(tmp_path, files, pg.database()))
    assert report.outcome is Outcome.FAILED
    assert [(f.artifact, f.line) for f in report.findings] == [("database/broken.sql", 3)]
    assert 'type "nosuchtype" does not exist' in report.findings[0].message
    assert pg.query(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{pg.role}'") == [(True,)]  # created on demand
    untouched(pg)


HOSTILE = [
    "DROP TABLE factory_runs;",
    "DROP TABLE public.factory_runs;",
    "CREATE TABLE t (x int); COMMIT; DROP SCHEMA public CASCADE;",
    "RESET ROLE; DROP TABLE public.factory_runs;",
    "SET ROLE {admin}; DROP TABLE public.factory_runs;",
    "SET SESSION AUTHORIZATION {admin}; DROP TABLE public.factory_runs;",
    "DELETE FROM public.factory_runs;",
    "UPDATE public.factory_runs SET note = 'gone';",
    "CREATE TABLE public.planted (x int);",
    "CREATE SCHEMA planted;",
    "DO $$ BEGIN EXECUTE 'DROP SCHEMA ' || current_schema() || ' CASCADE'; END $$;",
    "DO $$ BEGIN EXECUTE 'ALTER SCHEMA ' || current_schema() || ' RENAME TO kept'; END $$;",
    "ALTER ROLE {role} SUPERUSER;",
    "CREATE ROLE planted LOGIN SUPERUSER;",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/verify-planted';",
]


def planted_file() -> bool:
    return Path("/tmp/verify-planted").exists()


async def test_hostile_sql_leaves_the_database_untouched(pg: Scratch, tmp_path: Path) -> None:
    files = {f"database/hostile_{i:02d}.sql": sql.format(admin=pg.admin, role=pg.role) for i, sql in enumerate(HOSTILE)}
    (report,) = await run_checks(checks_for(["sql-apply"]), sql_stage(tmp_path, files, pg.database()), timeout_s=120)
    assert report.outcome is Outcome.FAILED
    refused = {f.artifact for f in report.findings}
    assert refused == set(files), sorted(set(files) - refused)  # each one refused by PostgreSQL
    untouched(pg)
    assert pg.query("SELECT count(*) FROM pg_roles WHERE rolname = 'planted'") == [(0,)]
    assert not planted_file()


async def test_sql_that_lifts_its_timeout_is_stopped_and_its_schema_dropped(pg: Scratch, tmp_path: Path) -> None:
    files = {"database/slow.sql": "CREATE TABLE t (x int); SET statement_timeout = 0; SELECT pg_sleep(120);"}
    (report,) = await run_checks(checks_for(["sql-apply"]), sql_stage(tmp_path, files, pg.database(), wall_s=2.0))
    assert report.outcome is Outcome.FAILED and "did not finish in 2 s" in report.findings[0].message
    untouched(pg)


async def test_a_role_with_more_rights_than_a_scratch_role_is_refused(pg: Scratch, tmp_path: Path) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{pg.role}" LOGIN CREATEDB')
    ws = sql_stage(tmp_path, {"database/schema.sql": GOOD_DDL}, pg.database())
    (report,) = await run_checks(checks_for(["sql-apply"]), ws)
    assert report.outcome is Outcome.ERROR and "rolcreatedb" in report.detail
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'ALTER ROLE "{pg.role}" NOCREATEDB')
        conn.execute(f'GRANT SELECT ON public.factory_runs TO "{pg.role}"')
    (report,) = await run_checks(checks_for(["sql-apply"]), ws)
    assert report.outcome is Outcome.ERROR and "factory_runs" in report.detail
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'REVOKE SELECT ON public.factory_runs FROM "{pg.role}"')
        conn.execute(f'GRANT "{pg.admin}" TO "{pg.role}"')
    (report,) = await run_checks(checks_for(["sql-apply"]), ws)
    assert report.outcome is Outcome.ERROR and "member of" in report.detail
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'REVOKE "{pg.admin}" FROM "{pg.role}"')
    (report,) = await run_checks(checks_for(["sql-apply"]), ws)
    assert report.outcome is Outcome.PASSED, report
    untouched(pg)


async def test_a_check_cancelled_by_the_runner_still_drops_its_schema(pg: Scratch, tmp_path: Path) -> None:
    files = {"database/slow.sql": "CREATE TABLE t (x int); SET statement_timeout = 0; SELECT pg_sleep(120);"}
    ws = sql_stage(tmp_path, files, pg.database(), wall_s=60.0)
    (report,) = await run_checks(checks_for(["sql-apply"]), ws, timeout_s=1.5)
    assert report.outcome is Outcome.ERROR and report.detail == "the check did not finish in 1.5 s"
    untouched(pg)
