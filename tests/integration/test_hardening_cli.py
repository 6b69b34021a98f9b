"""Issue 13, items 4, 5, 8 and 9 through the real `factory` CLI: text that is not UTF-8, places a
bundle cannot go, model output with terminal controls, services failing mid-command."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from factory import services
from tests.integration.cli import FACTORY, factory, run_json
from tests.integration.conftest import write_script

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."
BAD = os.fsdecode(b"caf\xe9 \xff")  # what Python makes of bytes that are not UTF-8 in argv
HOSTILE = "see \x1b]0;pwned\x07 here\r\x1b[2Kdone \x9b31m"


def _one_line_error(proc: subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]) -> str:
    stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factory: ") and "Traceback" not in stderr, stderr
    return lines[0]


def _runs(pg_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(pg_url) as conn:
        if conn.execute("SELECT to_regclass('runs')").fetchone() == (None,):
            return []
        return [(r[0], r[1]) for r in conn.execute("SELECT id, status FROM runs ORDER BY created_at").fetchall()]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", BAD], "argument 2"),
        (["run", "ok", "--pipeline", BAD], "after --pipeline"),
        (["run", "ok", "--out", BAD], "after --out"),
        (["revise", "run-x", "--from", "qa-engineering", "--feedback", BAD], "after --feedback"),
        (["revise", "run-x", "--from", "qa-engineering", f"--feedback={BAD}"], "the value of --feedback"),
        (["hitl", "answer", "esc-1", BAD], "argument 4"),
        (["hitl", "reject", "esc-1", "--reason", BAD], "after --reason"),
        (["hitl", "approve", "esc-1", "--notes", BAD], "after --notes"),
        (["hitl", "approve", "esc-1", "--by", BAD], "after --by"),
        (["hitl", "defer", BAD], "argument 3"),
        (["hitl", "show", BAD], "argument 3"),
        (["ask", BAD], "argument 2"),
        (["audit", "search", BAD], "argument 3"),
        (["audit", "verify", BAD], "argument 3"),
        (["responders", "--team", BAD], "after --team"),
    ],
)
def test_argument_not_utf8_is_an_input_error(env: dict[str, str], pg_url: str, args: list[str], named: str) -> None:
    proc = factory(*args, env=env)
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert named in line and "not UTF-8 text" in line and "caf\\xe9 \\xff" in line
    assert _runs(pg_url) == []


def test_setting_not_utf8_is_an_input_error(env: dict[str, str]) -> None:
    proc = factory("hitl", "list", env={**env, "FACTORY_OPERATOR": BAD})
    assert proc.returncode == 2 and "FACTORY_OPERATOR is not UTF-8 text" in _one_line_error(proc)


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["run", "-"], "requirement"),
        (["revise", "run-x", "--from", "qa-engineering", "--feedback", "-"], "feedback"),
        (["hitl", "answer", "esc-1", "-"], "answer"),
        (["hitl", "reject", "esc-1", "--reason", "-"], "reason"),
    ],
)
def test_stdin_not_utf8_is_an_input_error(env: dict[str, str], pg_url: str, args: list[str], what: str) -> None:
    proc = subprocess.run([FACTORY, *args], env=env, input=b"caf\xe9 au lait", capture_output=True, check=False)
    assert proc.returncode == 2
    assert f"the {what} on standard input is not UTF-8 text" in _one_line_error(proc)
    assert _runs(pg_url) == []


def test_huge_audit_search_is_refused_by_the_cli_and_the_audit_log(env: dict[str, str], pg_url: str) -> None:
    words = " ".join(f"w{i}" for i in range(20_000))
    proc = factory("audit", "search", words, env=env)
    assert proc.returncode == 2 and "the search query is" in _one_line_error(proc)
    many = " ".join(["postgres"] * 65)  # short in bytes, too many words
    proc = factory("audit", "search", many, env=env)
    assert proc.returncode == 2 and "65 words" in _one_line_error(proc)
    proc = factory("audit", "search", " ".join(["postgres"] * 64), "--json", env=env)
    assert proc.returncode == 0, proc.stderr  # at the bound: searched (nothing found on an empty audit)
    assert json.loads(proc.stdout) == []


async def test_audit_log_bounds_queries_itself(pg_url: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    from factory.errors import InputError
    from factory.migrations import migrate
    from memory.audit_pg import PostgresAuditLog

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(pg_url, open=False, kwargs={"autocommit": True}) as pool:
        with pytest.raises(InputError, match="words"):
            await PostgresAuditLog(pool).search(" ".join(["w"] * 500))  # 999 bytes, 500 words


@pytest.mark.parametrize("place", ["file", "/dev/null", "/proc", "/proc/factory-out", "/sys/kernel", "/dev/shm/x"])
def test_bad_out_is_refused_before_any_run(env: dict[str, str], pg_url: str, tmp_path: Path, place: str) -> None:
    if place == "file":
        (tmp_path / "file").write_text("not a directory\n")
        place = str(tmp_path / "file")
    proc = factory("run", REQ, "--out", place, "--json", env=env)
    assert proc.returncode == 2
    assert "bundle directory" in _one_line_error(proc) and proc.stdout == ""
    assert _runs(pg_url) == []  # no run, so no model call was paid for


def test_unwritable_default_runs_dir_is_refused(env: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data-file"
    data.write_text("a file where the data directory should be\n")
    proc = factory("run", REQ, env={**env, "FACTORY_DATA_DIR": str(data)})
    assert proc.returncode == 2
    assert "FACTORY_DATA_DIR" in _one_line_error(proc) and _runs(pg_url) == []


def test_revise_out_file_creates_no_revision(env: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    parent = run_json(factory("run", REQ, "--json", env=env))
    assert parent["status"] == "complete"
    target = tmp_path / "bundle.txt"
    target.write_text("a file\n")
    for out in (str(target), "/dev/null", "/proc/self"):
        proc = factory("revise", parent["run_id"], "--from", "qa-engineering", "--feedback", "more tests",
                       "--out", out, env=env)  # fmt: skip
        assert proc.returncode == 2 and "bundle directory" in _one_line_error(proc)
    assert _runs(pg_url) == [(parent["run_id"], "complete")] and target.read_text() == "a file\n"
    ok = factory("revise", parent["run_id"], "--from", "qa-engineering", "--feedback", "more tests",
                 "--out", str(tmp_path / "new" / "place"), "--json", env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert Path(run_json(ok)["artifacts_dir"]).parent == (tmp_path / "new" / "place").resolve()


def _assert_inert(text: str) -> None:
    for control in ("\x1b", "\x07", "\r", "\x9b"):
        assert control not in text, repr(text)


def test_model_text_cannot_drive_the_terminal(env: dict[str, str], pg_url: str) -> None:
    blocked = {
        "status": "BLOCKED", "reasoning": f"reasoning {HOSTILE}", "blockers": [f"blocker {HOSTILE}"],
        "assumptions_made": [f"assumed {HOSTILE}"], "verified_facts": [], "clarification_needed": None,
        "artifacts": [], "confidence": 0.1,
    }  # fmt: skip
    write_script(env, {"teams": {"backend-engineering": [blocked]}})
    run = factory("run", REQ, "--non-interactive", env=env)
    assert run.returncode == 3, run.stderr
    _assert_inert(run.stdout + run.stderr)
    assert "waiting on you:" in run.stdout

    listing = factory("hitl", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    _assert_inert(listing.stdout + listing.stderr)
    (line,) = [ln for ln in listing.stdout.splitlines() if "backend-engineering" in ln]
    escalation_id = line.split()[0]
    assert "\\x1b]0;pwned\\x07" in listing.stdout  # shown, escaped: the operator still sees what was said

    shown = factory("hitl", "show", escalation_id, env=env)
    assert shown.returncode == 0, shown.stderr
    _assert_inert(shown.stdout + shown.stderr)
    assert "blocker see \\x1b]0;pwned\\x07 here\\x0d" in shown.stdout

    as_json = factory("hitl", "show", escalation_id, "--json", env=env)
    _assert_inert(as_json.stdout)
    assert HOSTILE in json.loads(as_json.stdout)["context"]["blockers"][0]  # JSON keeps the text, escaped

    answered = factory("hitl", "answer", escalation_id, f"use postgres {HOSTILE}", "--no-resume", env=env)
    assert answered.returncode == 0, answered.stderr
    _assert_inert(answered.stdout + answered.stderr)
    again = factory("hitl", "answer", escalation_id, "twice", "--no-resume", env=env)  # an error naming it
    assert again.returncode != 0
    _assert_inert(again.stdout + again.stderr)

    found = factory("audit", "search", "pwned", env=env)
    assert found.returncode == 0 and "pwned" in found.stdout
    _assert_inert(found.stdout + found.stderr)
    summary = factory("hitl", "summary", env=env)
    _assert_inert(summary.stdout + summary.stderr)


def _wait_for_running_stage(url: str, limit: int = 1200) -> str:
    for _ in range(limit):  # bounded: about two minutes
        with psycopg.connect(url) as conn:
            try:
                row = conn.execute("SELECT run_id FROM stages WHERE status = 'running'").fetchone()
            except psycopg.errors.UndefinedTable:
                row = None  # the subprocess has not migrated yet
        if row:
            return str(row[0])
        time.sleep(0.1)
    raise AssertionError("no stage started")


def _database_down(admin_url: str, name: str, *, down: bool) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if down else "true"}')
        if down:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


def test_postgres_lost_mid_run_is_one_line_and_the_run_resumes(
    env: dict[str, str], pg_url: str, pg_admin_url: str
) -> None:
    write_script(env, {"latency_s": 2.0})
    env = {**env, "FACTORY_CONNECT_TIMEOUT_S": "2", "FACTORY_RUN_LEASE_TTL_S": "2"}
    name = urlsplit(pg_url).path.lstrip("/")
    proc = subprocess.Popen(
        [FACTORY, "run", REQ, "--json", "--non-interactive"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        run_id = _wait_for_running_stage(pg_url)
        _database_down(pg_admin_url, name, down=True)  # inside the first stage's model call
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        _database_down(pg_admin_url, name, down=False)
    assert proc.returncode == 1, stderr
    # Log lines (the pool retrying, the lease renewal failing) may come first; the error is one line.
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and [ln for ln in lines if ln.startswith("factory:")] == lines[-1:], stderr
    line = lines[-1]
    assert line.startswith("factory: PostgreSQL") and "FACTORY_DATABASE_URL" in line and stdout == ""
    assert f"factory resume {run_id}" in line
    assert dict(_runs(pg_url))[run_id] == "running"  # left for a resume, not failed

    write_script(env, {})
    for _ in range(60):  # bounded: the dead process's lease runs out on its own
        resumed = factory("resume", run_id, "--json", env=env)
        if "being driven" not in resumed.stderr and "busy" not in resumed.stderr:
            break
        time.sleep(1)
    assert resumed.returncode == 0, resumed.stderr
    assert run_json(resumed)["status"] == "complete"


def test_postgres_unreachable_is_one_line(env: dict[str, str]) -> None:
    proc = factory("hitl", "list", env={**env, "FACTORY_DATABASE_URL": "postgresql://u:secret@127.0.0.1:9/none"})
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "PostgreSQL at postgresql://127.0.0.1:9/none" in line and "secret" not in line


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own, which the test may break."""
    folder = tmp_path / "private-redis"
    url = services.start_redis(folder, timeout_s=30)
    yield url
    services.stop(folder)


def test_redis_refusing_mid_command_is_one_line(env: dict[str, str], private_redis: str) -> None:
    from redis import Redis

    client = Redis.from_url(private_redis)
    try:
        client.acl_setuser("default", enabled=True, reset_keys=True)  # PING works, every key is refused
    finally:
        client.close()
    proc = factory("broker", "stats", env={**env, "FACTORY_REDIS_URL": private_redis})
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert line.startswith("factory: Redis at ") and "no permissions" in line and "FACTORY_REDIS_URL" in line


def test_redis_unreachable_is_one_line(env: dict[str, str]) -> None:
    proc = factory("hitl", "list", env={**env, "FACTORY_REDIS_URL": "redis://:secret@127.0.0.1:9/0"})
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "Redis at redis://127.0.0.1:9/0" in line and "secret" not in line
