"""The ``check_files`` tool end to end (issue 19): the real `factory` CLI with the verification gate on,
real PostgreSQL and Redis, the real sandbox (Debian's bubblewrap) and the real checkers. A scripted
team writes a broken file, checks it, gets the finding back, then delivers the fixed file and passes
the gate at its first execution."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import write_script
from tests.debian import ensure_debian
from tests.integration.cli import factory, run_json
from tests.integration.test_verification import GOOD, REQ, entries, good

pytestmark = pytest.mark.integration
TEAM = "backend-engineering"


@pytest.fixture
def checked(env: dict[str, str]) -> dict[str, str]:
    """The `factory` environment with the verification gate on and bubblewrap installed."""
    ensure_debian("bwrap", "bubblewrap")
    return {**env, "FACTORY_VERIFY": "true"}


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"tool": tool, "arguments": arguments}


def backend(proc_env: dict[str, str], pg_url: str, broken: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the backend stage alone: write ``broken`` as backend/app.py, check it, deliver the good file.
    Returns the run's --json and the stage's one execution audit entry."""
    answers = [call("write_artifact", name="backend/app.py", content=broken), call("check_files"), good(TEAM)]
    write_script(proc_env, {"teams": {TEAM: answers}})
    proc = factory("run", REQ, "--pipeline", TEAM, "--json", "--non-interactive", env=proc_env)
    assert proc.returncode == 0, proc.stderr
    out = run_json(proc)
    [execution] = [e for e in entries(pg_url, out["run_id"], "stage.execution") if e["team"] == TEAM]
    return out, execution


def test_a_team_checks_its_broken_file_then_delivers_the_fixed_one(checked: dict[str, str], pg_url: str) -> None:
    out, execution = backend(checked, pg_url, GOOD["backend/app.py"] + "\ndef oops(:\n")
    [stage] = out["stages"]
    assert out["status"] == "complete" and stage["attempts"] == 1, out
    assert stage["checks"]["failed"] == 0 and stage["checks"]["passed"] >= 1
    written, checking = execution["tool_calls"]
    assert written["tool"] == "write_artifact" and written["ok"]
    assert checking["tool"] == "check_files" and checking["ok"] and checking["arguments"] == {"names": None}
    told = checking["outcome"]
    assert told.startswith("check_files over backend/app.py:") and "python-syntax" in told.split("\n")[0]
    assert "[python-syntax, high] backend/app.py line" in told, told
    assert execution["gate"]["verdict"] == "advance"
    ran = {r["check"]: r["outcome"] for r in execution["checks"]["reports"]}
    assert ran["python-syntax"] == "passed" and ran["python-import"] == "passed", ran


def test_the_tool_runs_code_in_the_sandbox(checked: dict[str, str], pg_url: str) -> None:
    """A file that parses but fails when imported: only the sandboxed import check finds it."""
    out, execution = backend(checked, pg_url, GOOD["backend/app.py"] + '\nraise RuntimeError("no config file")\n')
    assert out["status"] == "complete" and out["stages"][0]["attempts"] == 1, out
    told = execution["tool_calls"][1]["outcome"]
    first = told.split("\n")[0]
    assert "failed python-import" in first and "python-syntax" in first.split("failed")[0], told
    assert "no config file" in told
