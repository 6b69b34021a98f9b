"""Cancelling runs on the real services: a waiting run (its escalations closed, its audit intact), a run
another process drives (a `factory run`, a `factory worker`: it stops and nothing drives it again), two
cancels at once, and the `factory cancel` command. And a revision submitted for a worker to drive."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from factory.errors import DecisionConflict, RunFinished
from factory.settings import Settings
from factory.wiring import open_factory
from hitl.attention import attention
from hitl.sla import SlaPolicy
from teams.base import Run, RunStatus
from teams.revision import submit_revision
from teams.snapshot import verify_run
from tests.conftest import write_script
from tests.integration.cli import FACTORY, factory, run_json
from tests.unit.teams.test_decisions import PromptSpy
from tests.unit.teams.test_gate import result

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener with an HTTP API."
BLOCKED = {"teams": {"solution-architecture": [result("BLOCKED", 0.2, blockers=["which database?"])]}}


def _settings(env: dict[str, str]) -> Settings:
    """In-process settings on the same database, Redis prefix, data dir and scripted model as the
    `factory` processes (a run keeps the routing it was created with: the scripted model's)."""
    return Settings(
        data_dir=Path(env["FACTORY_DATA_DIR"]), database_url=SecretStr(env["FACTORY_DATABASE_URL"]),
        redis_url=SecretStr(env["FACTORY_REDIS_URL"]), redis_prefix=env["FACTORY_REDIS_PREFIX"],
        scripted_model=Path(env["FACTORY_SCRIPTED_MODEL"]),
    )  # fmt: skip


def _rows(pg_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _wait_for(what: str, check: Any, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except psycopg.errors.UndefinedTable:  # the process has not migrated yet
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running_stage(pg_url: str, index: int) -> str:
    """The id of the run whose stage ``index`` is running, once it is."""
    sql = "SELECT run_id FROM stages WHERE idx = %s AND status = 'running'"
    return str(_wait_for(f"stage {index} to run", lambda: _rows(pg_url, sql, (index,)))[0][0])


def _kinds(pg_url: str, run_id: str) -> list[str]:
    return [r[0] for r in _rows(pg_url, "SELECT kind FROM audit_entries WHERE run_id = %s ORDER BY seq", (run_id,))]


async def test_cancelling_a_waiting_run_on_real_services(env: dict[str, str]) -> None:
    async with open_factory(_settings(env), model=PromptSpy(BLOCKED)) as f:
        out = await f.engine.start(REQ, "phase1")
        [escalation] = out.escalations
        run = await f.engine.cancel(out.run.id, by="ana", reason="the requirement was wrong")
        assert run.status is RunStatus.CANCELLED
        now = datetime.now(UTC)
        assert attention(await f.escalations.list_open(), SlaPolicy(), now).total == 0
        assert (await f.escalations.get(escalation.id)).status.value == "expired"  # type: ignore[union-attr]
        with pytest.raises(DecisionConflict, match="already expired by ana"):
            await f.desk.answer(escalation.id, "PostgreSQL", by="bo")
        report = await verify_run(f.audit, run)
        assert report.intact, report.problems
        entries = await f.audit.entries(run.id)
        decided = [json.loads(e.payload) for e in entries if e.kind == "escalation.decided"]
        assert [(d["id"], d["decision"], d["text"]) for d in decided] == [
            (escalation.id, "expired", "the requirement was wrong")
        ]  # recorded once, with the change
        cancelled = json.loads(entries[-1].payload)
        assert (entries[-1].kind, cancelled["by"], cancelled["reason"], cancelled["team"]) == (
            "run.cancelled", "ana", "the requirement was wrong", "solution-architecture",
        )  # fmt: skip
        assert (await f.engine.drive(run.id)).run.status is RunStatus.CANCELLED
        with pytest.raises(RunFinished, match="already cancelled"):
            await f.engine.cancel(run.id, by="ana")


async def test_two_cancels_in_two_processes_one_wins(env: dict[str, str]) -> None:
    settings = _settings(env)
    async with open_factory(settings) as first, open_factory(settings) as second:
        runs = [await first.engine.submit(REQ, "phase1") for _ in range(5)]
        for run in runs:  # several rounds, so the race is really run
            outcomes = await asyncio.gather(
                first.engine.cancel(run.id, by="ana", reason="a"),
                second.engine.cancel(run.id, by="bo", reason="b"),
                return_exceptions=True,
            )
            assert sum(isinstance(o, Run) for o in outcomes) == 1, outcomes
            [lost] = [o for o in outcomes if not isinstance(o, Run)]
            assert isinstance(lost, RunFinished) and "already cancelled" in str(lost), lost
            kinds = [e.kind for e in await first.audit.entries(run.id)]
            assert kinds.count("run.cancelled") == 1 and (await first.audit.verify(run.id)).intact


def _drive_in_another_process(env: dict[str, str]) -> subprocess.Popen[str]:
    write_script(env, {"latency_s": 1.5})
    return subprocess.Popen(
        [FACTORY, "run", REQ, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _stopped_quietly(driver: subprocess.Popen[str], run_id: str) -> None:
    """The driver's model call came back, its commit was refused, and it stopped, saying so in one line."""
    try:
        _stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 1 and "Traceback" not in stderr, stderr
    assert f"no longer holds run {run_id}" in stderr and "an operator cancelled the run" in stderr


async def test_a_run_cancelled_mid_stage_stops_the_process_driving_it(env: dict[str, str], pg_url: str) -> None:
    async with open_factory(_settings(env)) as f:  # open before the race: the cancel itself takes milliseconds
        driver = _drive_in_another_process(env)
        try:
            run_id = await asyncio.to_thread(_running_stage, pg_url, 1)
        except AssertionError:
            driver.kill()
            driver.communicate()
            raise
        await asyncio.sleep(0.3)  # inside the model call of stage 1 (1.5 s)
        run = await f.engine.cancel(run_id, by="ana", reason="wrong requirement")
        assert run.status is RunStatus.CANCELLED
        await asyncio.to_thread(_stopped_quietly, driver, run_id)
        stages = await f.store.stages(run_id)
        assert [s.status.value for s in stages] == ["complete", "failed", "pending", "pending", "pending"]
        assert stages[1].result is None and stages[1].finished_at is not None
        assert not [a for a in await f.store.artifacts(run_id) if a.stage_index == 1]
        kinds = [e.kind for e in await f.audit.entries(run_id)]
        assert kinds.count("stage.complete") == 1 and "stage.complete" not in kinds[kinds.index("run.cancelled") :]
        # The execution whose commit was refused is audited (its model call was paid for), after the cancel.
        assert (await verify_run(f.audit, run)).intact

    calls = _rows(pg_url, "SELECT count(*) FROM usage_ledger WHERE run_id = %s", (run_id,))
    worker = await asyncio.to_thread(factory, "worker", "--once", env=env)
    assert worker.returncode == 0 and run_id not in worker.stdout, worker.stdout + worker.stderr
    assert _rows(pg_url, "SELECT count(*) FROM usage_ledger WHERE run_id = %s", (run_id,)) == calls
    assert _rows(pg_url, "SELECT status FROM runs WHERE id = %s", (run_id,)) == [("cancelled",)]
    assert (await asyncio.to_thread(factory, "audit", "verify", run_id, env=env)).returncode == 0


def test_factory_cancel_stops_a_run_another_process_drives(env: dict[str, str], pg_url: str) -> None:
    driver = _drive_in_another_process(env)
    try:
        run_id = _running_stage(pg_url, 1)
    except AssertionError:
        driver.kill()
        driver.communicate()
        raise
    try:
        cancel = factory("cancel", run_id, "--reason", "wrong requirement", "--by", "ana", "--json", env=env)
        assert cancel.returncode == 0, cancel.stderr
        assert json.loads(cancel.stdout) == {
            "run_id": run_id, "status": "cancelled", "by": "ana", "reason": "wrong requirement"
        }  # fmt: skip
    finally:
        _stopped_quietly(driver, run_id)
    assert _rows(pg_url, "SELECT status FROM runs WHERE id = %s", (run_id,)) == [("cancelled",)]
    # The stage in flight when the cancel came failed (none if it came between two stages, while the
    # last one's memory was retained: the command takes a while to start), those after it never ran.
    statuses = [s for (s,) in _rows(pg_url, "SELECT status FROM stages WHERE run_id = %s ORDER BY idx", (run_id,))]
    done = statuses.count("complete")
    stopped = ["failed"] if "failed" in statuses else []
    assert 1 <= done < 5 and statuses == ["complete"] * done + stopped + ["pending"] * (5 - done - len(stopped))
    kinds = _kinds(pg_url, run_id)
    assert "stage.complete" not in kinds[kinds.index("run.cancelled") :] and kinds.count("stage.complete") == done
    [(cancelled,)] = _rows(pg_url, "SELECT payload FROM audit_entries WHERE run_id = %s AND kind = 'run.cancelled'",
                           (run_id,))  # fmt: skip
    assert (json.loads(cancelled)["stage"], json.loads(cancelled)["by"]) == (done, "ana")  # where it stopped

    again = factory("cancel", run_id, "--by", "bo", env=env)
    assert again.returncode == 2 and f"run {run_id} is already cancelled; nothing to cancel" in again.stderr
    unknown = factory("cancel", "run-nope", env=env)
    assert unknown.returncode == 2 and "no run 'run-nope'" in unknown.stderr
    nameless = factory("cancel", run_id, "--by", " ", env=env)
    assert nameless.returncode == 2 and "no author" in nameless.stderr


def test_factory_cancel_of_a_waiting_run_in_plain_words(env: dict[str, str], pg_url: str) -> None:
    write_script(env, BLOCKED)
    waiting = factory("run", REQ, "--json", "--non-interactive", env=env)
    assert waiting.returncode == 3, waiting.stderr
    run_id = run_json(waiting)["run_id"]
    cancel = factory("cancel", run_id, "--reason", "-", "--by", "ana", env=env, stdin="out of scope\n")
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.strip() == f"run {run_id}: cancelled by ana: out of scope"
    listed = factory("hitl", "list", "--json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    complete = factory("run", REQ, "--json", env=(env | {"FACTORY_SCRIPTED_MODEL": str(_empty(env))}))
    done = run_json(complete)["run_id"]
    finished = factory("cancel", done, env=env)
    assert finished.returncode == 2 and f"run {done} is already complete; nothing to cancel" in finished.stderr


def _empty(env: dict[str, str]) -> Path:
    script = Path(env["FACTORY_DATA_DIR"]).parent / "empty-script.json"
    script.write_text("{}")
    return script


def test_a_worker_whose_run_is_cancelled_lets_it_go_quietly(env: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    write_script(env, {"latency_s": 1.5})
    env = {**env, "FACTORY_WORKER_POLL_S": "0.5"}
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([FACTORY, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        queued = factory("run", REQ, "--detach", "--json", env=env)
        assert queued.returncode == 0, queued.stderr
        run_id = json.loads(queued.stdout)["run_id"]
        assert _running_stage(pg_url, 1) == run_id
        time.sleep(0.3)
        cancel = factory("cancel", run_id, "--reason", "stop", "--by", "ana", env=env)
        assert cancel.returncode == 0, cancel.stderr
        _wait_for("the worker to let the run go", lambda: f"no longer holds run {run_id}" in log.read_text())
        calls = _rows(pg_url, "SELECT count(*) FROM usage_ledger WHERE run_id = %s", (run_id,))
        time.sleep(2.0)  # four polls: the worker does not take the run up again
        assert worker.poll() is None, log.read_text()
        assert _rows(pg_url, "SELECT count(*) FROM usage_ledger WHERE run_id = %s", (run_id,)) == calls
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert _rows(pg_url, "SELECT status FROM runs WHERE id = %s", (run_id,)) == [("cancelled",)]
    kinds = _kinds(pg_url, run_id)
    assert "stage.complete" not in kinds[kinds.index("run.cancelled") :]


async def test_a_submitted_revision_is_driven_by_a_worker(env: dict[str, str], pg_url: str) -> None:
    parent = run_json(factory("run", REQ, "--json", env=env))
    assert parent["status"] == "complete"
    async with open_factory(_settings(env)) as f:
        run = await submit_revision(
            f.engine, f.store, f.audit, parent["run_id"], "qa-engineering", "Add a load test for redirects."
        )
    assert run.status is RunStatus.RUNNING and run.parent_run_id == parent["run_id"]
    worker = await asyncio.to_thread(factory, "worker", "--once", env=env)
    assert worker.returncode == 0, worker.stderr
    assert f"resumed {run.id}: complete" in worker.stdout, worker.stderr
    rows = _rows(pg_url, "SELECT status, attempts FROM stages WHERE run_id = %s ORDER BY idx", (run.id,))
    assert rows == [("complete", 0)] * 3 + [("complete", 1)] * 2
    assert (await asyncio.to_thread(factory, "audit", "verify", run.id, env=env)).returncode == 0
