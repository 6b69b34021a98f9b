"""SIGKILL a real `factory run` mid-stage, then `factory resume` it."""

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

pytestmark = pytest.mark.integration


def _wait_for_running_stage(url: str, index: int, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            try:
                row = conn.execute(
                    "SELECT run_id FROM stages WHERE idx = %s AND status = 'running'", (index,)
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None  # the subprocess has not migrated yet
        if row:
            return str(row[0])
        time.sleep(0.1)
    raise AssertionError(f"stage {index} never started")


def test_killed_run_resumes_without_duplicates(
    cli_env: dict[str, str], pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"latency_s": 1.5}))
    env = {
        **cli_env,
        "FACTORY_DATABASE_URL": pg_url,
        "FACTORY_REDIS_URL": redis_base_url,
        "FACTORY_REDIS_PREFIX": redis_prefix,
        "FACTORY_SCRIPTED_MODEL": str(script),
    }
    proc = subprocess.Popen(
        [FACTORY, "run", "Build a todo API", "--json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        run_id = _wait_for_running_stage(pg_url, 2)
        time.sleep(0.3)  # inside the model call of stage 2
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone() == ("running",)

    script.write_text("{}")  # the resumed process needs no delay
    resumed = factory("resume", run_id, "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    out = run_json(resumed)
    assert out["status"] == "complete" and [s["attempts"] for s in out["stages"]] == [1, 1, 2, 1, 1]

    with psycopg.connect(pg_url) as conn:
        stage_rows = conn.execute("SELECT count(*) FROM stages WHERE run_id = %s", (run_id,)).fetchone()
        usage = dict(
            conn.execute(
                "SELECT team, count(*) FROM usage_ledger WHERE run_id = %s AND purpose = 'objective' GROUP BY team",
                (run_id,),
            ).fetchall()
        )
        retained = dict(
            conn.execute(
                "SELECT team, count(*) FROM usage_ledger WHERE run_id = %s AND purpose = 'memory' GROUP BY team",
                (run_id,),
            ).fetchall()
        )
        kinds = [r[0] for r in conn.execute("SELECT kind FROM audit_entries WHERE run_id = %s ORDER BY seq", (run_id,))]
        artifacts = conn.execute("SELECT count(*) FROM artifacts WHERE run_id = %s", (run_id,)).fetchone()
    assert stage_rows == (5,) and artifacts == (9,)
    assert usage["business-analysis"] == 1 and usage["solution-architecture"] == 1  # not re-run
    assert usage["backend-engineering"] == 1  # the killed call never finished, so never recorded
    assert set(retained.values()) == {1} and len(retained) == 5  # each stage's memory extracted once
    assert kinds.count("stage.complete") == 5 and kinds.count("run.snapshot") == 1 and kinds.count("run.created") == 1
    assert factory("audit", "verify", run_id, env=env).returncode == 0
    assert run_json(factory("resume", run_id, "--json", env=env))["audit"] == out["audit"]  # idempotent
