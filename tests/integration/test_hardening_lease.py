"""One driver per run, always (issue 13, item 1): real `factory` processes on real PostgreSQL.

The lease is a row with an owner and a fencing token that every commit of the run checks in its
own transaction: killing database backends does not free it, and a driver that stalled past the
lease's lifetime and lost the run to another process commits nothing more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.integration.cli import FACTORY, factory, run_json
from tests.integration.test_resume_after_kill import _wait_for_running_stage

pytestmark = pytest.mark.integration


def _env(cli_env: dict[str, str], pg_url: str, redis_url: str, prefix: str, script: Path) -> dict[str, str]:
    return {
        **cli_env,
        "FACTORY_DATABASE_URL": pg_url,
        "FACTORY_REDIS_URL": redis_url,
        "FACTORY_REDIS_PREFIX": prefix,
        "FACTORY_SCRIPTED_MODEL": str(script),
    }


def _start_run(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [FACTORY, "run", "Build a todo API", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _terminate_backends(url: str) -> int:
    """Kill every other backend of the test's database (the driver's pooled connections among them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def _audit_kinds(url: str, run_id: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT key FROM audit_entries WHERE run_id = %s ORDER BY seq", (run_id,))]


def test_killing_the_drivers_backends_does_not_let_a_second_driver_in(
    cli_env: dict[str, str], pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"latency_s": 1.5}))
    env = _env(cli_env, pg_url, redis_base_url, redis_prefix, script)
    first = _start_run(env)
    try:
        run_id = _wait_for_running_stage(pg_url, 1)
        time.sleep(0.3)  # inside stage 1's model call
        assert _terminate_backends(pg_url) >= 1
        second = factory("resume", run_id, "--json", env=env)
        assert second.returncode == 1 and "being driven by another process" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        out, errors = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The first driver lost its connections, not the run: it goes on to the end.
    assert first.returncode == 0, errors
    assert "Traceback" not in errors
    result = json.loads(out)
    assert result["status"] == "complete" and [s["attempts"] for s in result["stages"]] == [1] * 5
    keys = _audit_kinds(pg_url, run_id)
    assert sorted(k for k in keys if k.endswith(".complete")) == [f"stage.{i}.complete" for i in range(5)]
    assert [k for k in keys if ".execution." in k] == [f"stage.{i}.execution.1" for i in range(5)]
    assert factory("audit", "verify", run_id, env=env).returncode == 0


def test_a_stalled_driver_that_lost_the_run_commits_nothing(
    cli_env: dict[str, str], pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"latency_s": 1.0}))
    env = {**_env(cli_env, pg_url, redis_base_url, redis_prefix, script), "FACTORY_RUN_LEASE_TTL_S": "2"}
    stalled = _start_run(env)
    try:
        run_id = _wait_for_running_stage(pg_url, 1)
        os.kill(stalled.pid, signal.SIGSTOP)  # stalls inside stage 1's model call, past its lease
        time.sleep(3)
        busy = factory("resume", run_id, "--json", env=env)  # the lease lapsed: this one takes over
        assert busy.returncode == 0, busy.stderr
        taken = run_json(busy)
        assert taken["status"] == "complete"
        before = _audit_kinds(pg_url, run_id)
        with psycopg.connect(pg_url) as conn:
            stages_before = conn.execute(
                "SELECT idx, status, attempts, result FROM stages WHERE run_id = %s ORDER BY idx", (run_id,)
            ).fetchall()
        os.kill(stalled.pid, signal.SIGCONT)  # wakes up, finishes its model call, tries to commit
        _out, errors = stalled.communicate(timeout=120)
    finally:
        if stalled.poll() is None:
            os.kill(stalled.pid, signal.SIGCONT)
            stalled.kill()
            stalled.wait()
    assert stalled.returncode == 1, errors
    assert "no longer holds run" in errors and "Traceback" not in errors
    with psycopg.connect(pg_url) as conn:
        stages_after = conn.execute(
            "SELECT idx, status, attempts, result FROM stages WHERE run_id = %s ORDER BY idx", (run_id,)
        ).fetchall()
        status = conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert stages_after == stages_before and status == ("complete",)  # the stalled driver committed nothing
    after = _audit_kinds(pg_url, run_id)
    # What it did add is the model call it paid for, marked as never committed; nothing else.
    extra = [k for k in after if k not in before]
    assert all(k.startswith("stage.1.execution.") for k in extra), extra
    assert [k for k in after if k.endswith(".complete")] == [f"stage.{i}.complete" for i in range(5)]
    verify = factory("audit", "verify", run_id, env=env)
    assert verify.returncode == 0, verify.stdout
