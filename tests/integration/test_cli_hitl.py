"""The decision queue through the real `factory` command, each step a separate process: a run
stops for a human, the processes end, a decision is made later, and a worker resumes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import psycopg
import pytest

from tests.integration.cli import FACTORY, factory, run_json
from tests.integration.conftest import write_script
from tests.integration.test_resume_after_kill import _wait_for_running_stage

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."
FIELDS = {"id", "run_id", "kind", "priority", "status", "team", "question", "sla_deadline", "escalation_level"}


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FACTORY_OPERATOR": "ana"}


def _waiting(env: dict[str, str]) -> list[dict[str, Any]]:
    proc = factory("hitl", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    items: list[dict[str, Any]] = json.loads(proc.stdout)
    return items


def test_a_decision_made_after_every_process_ended_resumes_the_run(env: dict[str, str], pg_url: str) -> None:
    blocked = {"status": "BLOCKED", "reasoning": "r", "blockers": ["which datastore?"], "confidence": 0.3}
    write_script(env, {"teams": {"backend-engineering": [blocked]}})
    started = factory("run", REQ, "--json", env=env)
    assert started.returncode == 3, started.stderr
    run_id = run_json(started)["run_id"]

    [item] = _waiting(env)
    assert FIELDS <= item.keys()
    assert (item["kind"], item["priority"], item["status"], item["team"]) == (
        "blocked",
        "high",
        "open",
        "backend-engineering",
    )
    assert item["run_id"] == run_id and item["escalation_level"] == 0
    human = factory("hitl", "list", env=env)
    assert "1 waiting on you (1 high); 1 run blocked" in human.stdout and item["id"] in human.stdout
    shown = factory("hitl", "show", item["id"], env=env)
    assert "which datastore?" in shown.stdout and "choices:" in shown.stdout

    refused = factory("hitl", "approve", item["id"], env=env)
    assert refused.returncode == 2 and "answer it" in refused.stderr
    answered = factory("hitl", "answer", item["id"], "PostgreSQL, one table per aggregate", "--no-resume", env=env)
    assert answered.returncode == 0, answered.stderr
    assert "answered by ana" in answered.stdout and f"factory resume {run_id}" in answered.stdout
    again = factory("hitl", "answer", item["id"], "something else", env=env)
    assert again.returncode == 1 and "already answered by ana" in again.stderr

    write_script(env, {})  # each process reads the script afresh: no second BLOCKED answer
    worker = factory("worker", "--once", env=env)
    assert worker.returncode == 0, worker.stderr
    assert f"resumed {run_id}: complete" in worker.stdout
    assert _waiting(env) == []
    assert factory("audit", "verify", run_id, env=env).returncode == 0
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM audit_entries WHERE run_id = %s AND kind = 'escalation.decided'", (run_id,)
        ).fetchall()
        assert conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone() == ("complete",)
    [decision] = [json.loads(r[0]) for r in rows]
    assert (decision["decided_by"], decision["decision"]) == ("ana", "answered")
    assert decision["text"] == "PostgreSQL, one table per aggregate"


def test_batch_approve_refuses_what_is_not_low_risk(env: dict[str, str]) -> None:
    env = {**env, "FACTORY_CONFIDENCE_FLOOR": "0.95", "FACTORY_HITL_LOW_RISK_PRIORITIES": "low"}
    started = factory("run", REQ, "--pipeline", "business-analysis", "--json", env=env)
    assert started.returncode == 3, started.stderr
    [item] = _waiting(env)
    assert (item["kind"], item["priority"]) == ("approval", "medium")
    everything = factory("hitl", "batch-approve", "--all", env=env)  # only low-risk items are in it at all
    assert everything.returncode == 0 and "nothing low-risk is waiting" in everything.stdout
    batch = factory("hitl", "batch-approve", item["id"], env=env)
    assert batch.returncode == 1
    assert f"refused  {item['id']}: medium priority is not low-risk" in batch.stdout
    assert [i["status"] for i in _waiting(env)] == ["open"]
    wider = factory(
        "hitl", "batch-approve", item["id"], "--json", env={**env, "FACTORY_HITL_LOW_RISK_PRIORITIES": "low,medium"}
    )
    assert wider.returncode == 0 and json.loads(wider.stdout) == {"approved": [item["id"]], "refused": {}}
    assert factory("hitl", "reject", item["id"], "--reason", "late", env=env).returncode == 1  # decided already


def test_reject_needs_a_reason_and_defer_keeps_the_run_waiting(env: dict[str, str]) -> None:
    env = {**env, "FACTORY_CONFIDENCE_FLOOR": "0.95"}
    started = factory("run", REQ, "--pipeline", "business-analysis", "--json", env=env)
    [item] = _waiting(env)
    empty = factory("hitl", "reject", item["id"], "--reason", "  ", env=env)
    assert empty.returncode == 2 and "reason is empty" in empty.stderr
    deferred = factory("hitl", "defer", item["id"], "--hours", "2", env=env)
    assert deferred.returncode == 0 and "deferred by ana" in deferred.stdout and "keeps waiting" in deferred.stdout
    [after] = _waiting(env)
    assert after["status"] == "deferred" and after["sla_deadline"] != item["sla_deadline"]
    assert factory("resume", run_json(started)["run_id"], env=env).returncode == 3
    unknown = factory("hitl", "answer", "esc-nope", "x", env=env)
    assert unknown.returncode == 2 and "no escalation" in unknown.stderr
    for bad in (["--hours", "nan"], ["--hours", "100000"], ["--until", "9999-12-31T23:00:00"]):
        refused = factory("hitl", "defer", item["id"], *bad, env=env)
        assert refused.returncode == 2, (bad, refused.stderr)
    empty = factory("hitl", "answer", item["id"], "-", env=env, stdin="  \n")
    assert empty.returncode == 2 and "answer is empty" in empty.stderr
    approved = factory("hitl", "approve", item["id"], env=env)  # no worker runs: it continues the run here
    assert approved.returncode == 0, approved.stderr
    assert "approved by ana" in approved.stdout and "complete" in approved.stdout


def test_the_worker_resumes_a_run_whose_process_was_killed(env: dict[str, str], pg_url: str) -> None:
    write_script(env, {"latency_s": 1.5})
    proc = subprocess.Popen([FACTORY, "run", REQ], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = _wait_for_running_stage(pg_url, 1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    write_script(env, {})
    worker = factory("worker", "--once", env=env)
    assert worker.returncode == 0, worker.stderr
    assert f"resumed {run_id}: complete" in worker.stdout
    assert factory("audit", "verify", run_id, env=env).returncode == 0
