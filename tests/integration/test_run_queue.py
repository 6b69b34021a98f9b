"""The run queue (issue 16, item 4): runs queued with `factory run --detach` are claimed and driven
by any number of `factory worker` processes, coordinated only through PostgreSQL and Redis, here
through a real PgBouncer in transaction mode. One worker is SIGKILLed mid-stage: the other takes its
runs over, no stage completes twice, no run is left stuck, and the log lines are JSON with run ids."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from tests.integration.cli import FACTORY, factory
from tests.integration.conftest import write_script
from tests.integration.pgbouncer import PgBouncer

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."
RUNS = 4


def _rows(pg_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _wait(what: str, check: Any, timeout_s: float, procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        for proc in procs:
            assert proc.poll() is None, f"a worker exited early (rc {proc.returncode}) while waiting for {what}"
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([FACTORY, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            start_new_session=True)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _complete_in_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """The samples of the worker's /metrics once its snapshot counts all the runs complete, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return samples if samples.get(("factory_runs", (("status", "complete"),))) == RUNS + 1 else None


def _stage_completions(env: dict[str, str], redis_base_url: str) -> Counter[tuple[str, int]]:
    """How often each (run, stage) was announced complete on the live event stream."""
    client = Redis.from_url(redis_base_url)
    try:
        entries = client.xrange(f"{env['FACTORY_REDIS_PREFIX']}events", count=100_000)
    finally:
        client.close()
    done: Counter[tuple[str, int]] = Counter()
    for _id, fields in entries:
        event = json.loads(fields[b"json"])
        if event["type"] == "stage.completed":
            done[(event["run_id"], int(event["data"]["stage"]))] += 1
    return done


def test_two_workers_through_pgbouncer_one_killed_mid_run(
    env: dict[str, str], pg_url: str, pgbouncer: PgBouncer, redis_base_url: str, tmp_path: Path
) -> None:
    env = {
        **env,
        "FACTORY_DATABASE_URL": pgbouncer.url(pg_url),  # every process reaches PostgreSQL through the pooler
        "FACTORY_RUN_LEASE_TTL_S": "3",
        "FACTORY_WORKER_POLL_S": "0.5",
        "FACTORY_WORKER_RUNS": "2",
        "FACTORY_LOG_FORMAT": "json",
        "FACTORY_LOG_LEVEL": "INFO",
    }
    write_script(env, {"latency_s": 1.0})  # the kill lands in a model call, not a commit
    queued = []
    for _ in range(RUNS):
        proc = factory("run", REQ, "--detach", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(proc.stdout)
        assert answer["status"] == "running" and answer["workers_alive"] == 0
        queued.append(answer["run_id"])
    human = factory("run", REQ, "--detach", env=env)  # the operator is told nothing will drive it yet
    assert human.returncode == 0 and "no worker is running: start one with `factory worker`" in human.stderr
    queued.append(human.stdout.split()[2])

    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    port = _free_port()
    first, second = _worker(env, logs[0]), _worker({**env, "FACTORY_METRICS_PORT": str(port)}, logs[1])
    procs = [first, second]
    try:
        # Wait until the first worker is mid-stage on a run, then kill it without warning.
        def first_is_mid_stage() -> list[tuple[Any, ...]]:
            return _rows(
                pg_url,
                "SELECT s.run_id, s.idx FROM stages s JOIN run_leases l ON l.run_id = s.run_id"
                " WHERE s.status = 'running' AND l.owner LIKE %s AND l.expires_at > now()",
                (f"%:{first.pid}:%",),
            )

        held = _wait("the first worker to be mid-stage", first_is_mid_stage, 90, procs)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        procs = [second]

        def all_finished() -> bool:
            rows = _rows(pg_url, "SELECT status FROM runs WHERE id = ANY(%s)", (queued,))
            return len(rows) == len(queued) and all(status == "complete" for (status,) in rows)

        _wait("every queued run to complete", all_finished, 180, procs)
        # The survivor's /metrics: the shared gauges (refreshed in the background) and its own counters.
        scraped = _wait("the worker's /metrics to show every run complete", lambda: _complete_in_metrics(port),
                        30, procs)  # fmt: skip
        assert scraped[("factory_workers_alive", ())] == 1.0  # the killed worker's heartbeat is gone by now
        assert scraped[("factory_worker_active_runs", ())] == 0.0
        assert scraped[("factory_runs_finished_total", (("status", "complete"),))] >= 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    assert second.returncode == 0, logs[1].read_text()[-2000:]

    stages = _rows(pg_url, "SELECT run_id, idx, status, attempts FROM stages WHERE run_id = ANY(%s)", (queued,))
    assert stages and all(status == "complete" for _r, _i, status, _a in stages)
    # The killed worker's stages in flight ran once more (a new attempt); every other stage once.
    interrupted = {(run_id, idx) for run_id, idx in held}
    for run_id, idx, _status, attempts in stages:
        assert attempts == (2 if (run_id, idx) in interrupted else 1), (run_id, idx, attempts)
    # No stage executed twice to completion: one execution the gate advanced for each stage (from the
    # audit), and never two stage.completed events (a killed worker may have lost its last unsent one).
    advanced = _rows(
        pg_url,
        "SELECT run_id, (payload::jsonb ->> 'stage')::int, count(*) FROM audit_entries WHERE kind = 'stage.execution'"
        " AND payload::jsonb -> 'gate' ->> 'verdict' = 'advance' AND run_id = ANY(%s) GROUP BY 1, 2",
        (queued,),
    )
    assert {(r, i): n for r, i, n in advanced} == {(r, i): 1 for r, i, _s, _a in stages}
    completions = _stage_completions(env, redis_base_url)
    assert all(n == 1 for key, n in completions.items() if key[0] in queued)
    assert sum(1 for key in completions if key[0] in queued) >= len(stages) - len(interrupted)
    # No run left held: every lease was let go.
    assert _rows(pg_url, "SELECT run_id FROM run_leases WHERE expires_at > now() AND run_id = ANY(%s)", (queued,)) == []
    for run_id in queued:
        assert factory("audit", "verify", run_id, env=env).returncode == 0

    # The survivor's log: one JSON object a line, run and stage on the lines logged inside a run.
    lines = [json.loads(line) for line in logs[1].read_text().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    taken_over = {run_id for run_id, _ in interrupted}
    drove = {line["run_id"] for line in lines if line["message"].startswith("worker drove")}
    assert taken_over <= drove
    inside = [line for line in lines if line["logger"].startswith("teams.")]
    assert all("run_id" in line and "stage" in line and "team" in line for line in inside)
