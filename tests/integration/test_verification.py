"""The verification gate end to end (issue 19): the real `factory` CLI, real PostgreSQL and Redis, the
real sandbox (Debian's bubblewrap) and the real checkers, with the scripted model delivering a small
link-shortener service (code, tests, schema, OpenAPI document) and deliberately broken variants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from teams.roster import team
from tests.debian import ensure_debian
from tests.integration.cli import factory, run_json
from tests.integration.conftest import write_script

pytestmark = pytest.mark.integration
REQ = "Build a link shortener service with an HTTP API: create links and redirect."
DELIVERY = Path(__file__).resolve().parents[1] / "data" / "delivery"
GOOD = {
    "backend/app.py": (DELIVERY / "app.py").read_text(),
    "qa/test_app.py": (DELIVERY / "test_app.py").read_text(),
    "database/schema.sql": (DELIVERY / "schema.sql").read_text(),
    "api/openapi.yaml": (DELIVERY / "openapi.yaml").read_text(),
}
BROKEN = {
    "syntax": ("backend-engineering", "python-syntax", {"backend/app.py": GOOD["backend/app.py"] + "\ndef oops(:\n"}),
    "secret": (
        "backend-engineering",
        "secrets",
        {"backend/app.py": GOOD["backend/app.py"] + '\nAPI_KEY = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"\n'},
    ),
    "sql": (
        "database-engineering",
        "sql-apply",
        {"database/schema.sql": "CREATE TABLE links (code text PRIMARY KEY,, url);"},
    ),
    "openapi": (
        "api-design",
        "openapi",
        {"api/openapi.yaml": "openapi: 3.0.3\ninfo: {title: x}\npaths:\n  /a:\n    get: {}\n"},
    ),
    "test": (
        "qa-engineering",
        "pytest",
        {
            "qa/test_app.py": GOOD["qa/test_app.py"]
            + "\n\ndef test_wrong_status(server):\n    assert request(server, 'GET', '/nope')[0] == 200\n"
        },
    ),
}
PIPELINES = {
    "backend-engineering": "backend-engineering",
    "database-engineering": "database-engineering",
    "api-design": "api-design",
    "qa-engineering": "backend-engineering,qa-engineering",
}


@pytest.fixture
def checked(env: dict[str, str]) -> dict[str, str]:
    """The `factory` environment with the verification gate on and bubblewrap installed."""
    ensure_debian("bwrap", "bubblewrap")
    return {**env, "FACTORY_VERIFY": "true"}


def result(slug: str, files: dict[str, str], *, confidence: float = 0.9) -> dict[str, Any]:
    """A COMPLETE result of ``slug`` with its pinned deliverables, ``files`` where given."""
    artifacts = [
        {"name": d.name, "kind": d.kind, "content": files.get(d.name, f"# {d.name}\n\n{d.description}\n")}
        for d in team(slug).produces
    ]
    return {
        "status": "COMPLETE", "reasoning": f"{slug} delivers.", "blockers": [], "assumptions_made": [],
        "verified_facts": [], "clarification_needed": None, "artifacts": artifacts, "confidence": confidence,
    }  # fmt: skip


def good(slug: str) -> dict[str, Any]:
    return result(slug, GOOD)


def entries(pg_url: str, run_id: str, kind: str) -> list[dict[str, Any]]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM audit_entries WHERE run_id = %s AND kind = %s ORDER BY seq", (run_id, kind)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def test_a_correct_delivery_passes_every_check(checked: dict[str, str], pg_url: str) -> None:
    slugs = ["api-design", "database-engineering", "backend-engineering", "qa-engineering"]
    write_script(checked, {"teams": {slug: [good(slug)] for slug in slugs}})
    proc = factory("run", REQ, "--pipeline", ",".join(slugs), "--json", "--non-interactive", env=checked)
    assert proc.returncode == 0, proc.stderr
    out = run_json(proc)
    assert out["status"] == "complete", out
    by_team = {s["team"]: s for s in out["stages"]}
    for slug in slugs:
        checks = by_team[slug]["checks"]
        assert by_team[slug]["attempts"] == 1 and checks["failed"] == 0 and checks["errored"] == 0, (slug, checks)
        assert checks["passed"] >= 1 and checks["artifacts_checked"] >= 1, (slug, checks)
    assert by_team["qa-engineering"]["checks"]["tests_passed"] == 3
    assert out["checks"]["failed"] == 0 and out["checks"]["tests_passed"] == 3 and out["checks"]["stages_checked"] == 4
    (snapshot,) = entries(pg_url, out["run_id"], "run.snapshot")  # the figures an operator trusts, kept
    assert snapshot["checks_total"] == out["checks"] and snapshot["checks"]["qa-engineering"]["tests_passed"] == 3
    usage = factory("usage", "--run", out["run_id"], env=checked)
    assert "verification of 4 checked stages:" in usage.stdout and "tests 3 passed, 0 failed" in usage.stdout
    executions = entries(pg_url, out["run_id"], "stage.execution")
    ran = {r["check"]: r["outcome"] for e in executions for r in e["checks"]["reports"]}
    for check in ("openapi", "sql-apply", "python-syntax", "python-import", "ruff", "bandit", "secrets", "pytest"):
        assert ran.get(check) == "passed", (check, ran)


@pytest.mark.parametrize("variant", sorted(BROKEN))
def test_a_broken_delivery_fails_the_right_check_and_one_revision_fixes_it(
    checked: dict[str, str], pg_url: str, variant: str
) -> None:
    slug, check, broken = BROKEN[variant]
    script: dict[str, Any] = {"teams": {slug: [result(slug, {**GOOD, **broken}), good(slug)]}}
    if slug == "qa-engineering":
        script["teams"]["backend-engineering"] = [good("backend-engineering")]
    write_script(checked, script)
    proc = factory("run", REQ, "--pipeline", PIPELINES[slug], "--json", "--non-interactive", env=checked)
    assert proc.returncode == 0, proc.stderr
    out = run_json(proc)
    stage = next(s for s in out["stages"] if s["team"] == slug)
    assert out["status"] == "complete" and stage["attempts"] == 2, out
    assert stage["checks"]["failed"] == 0
    executions = [e for e in entries(pg_url, out["run_id"], "stage.execution") if e["team"] == slug]
    first, second = executions
    assert first["gate"]["verdict"] == "revise", first["gate"]
    failed = {r["check"] for r in first["checks"]["reports"] if r["outcome"] == "failed"}
    assert check in failed, (check, failed)
    assert second["gate"]["verdict"] == "advance"
    if variant == "test":
        report = next(r for r in first["checks"]["reports"] if r["check"] == "pytest")
        assert report["tests"] == {"passed": 3, "failed": 1, "errors": 0}
        assert any("test_wrong_status" in f["message"] for f in report["findings"])
    if variant == "secret":
        findings = [f for r in first["checks"]["reports"] if r["check"] == "secrets" for f in r["findings"]]
        assert findings and findings[0]["artifact"] == "backend/app.py"
        assert "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c" not in str(findings)  # a finding never repeats the secret


def test_checks_that_still_fail_escalate_with_the_findings_and_approval_accepts(
    checked: dict[str, str], pg_url: str
) -> None:
    slug, _check, broken = BROKEN["syntax"]
    bad = result(slug, {**GOOD, **broken})
    write_script(checked, {"teams": {slug: [bad, bad, bad]}})
    env = {**checked, "FACTORY_CHECK_REVISIONS": "1"}
    proc = factory("run", REQ, "--pipeline", slug, "--json", "--non-interactive", env=env)
    assert proc.returncode == 3, proc.stderr
    out = run_json(proc)
    assert out["status"] == "waiting_human" and out["stages"][0]["attempts"] == 2
    (escalation,) = out["escalations"]
    assert escalation["kind"] == "approval" and "python-syntax" in escalation["question"]
    assert "still fail after 1 revision" in escalation["question"]
    with psycopg.connect(pg_url) as conn:
        (context,) = conn.execute("SELECT context FROM escalations WHERE id = %s", (escalation["id"],)).fetchone()
    assert any(f["check"] == "python-syntax" and f["artifact"] == "backend/app.py" for f in context["findings"])
    approved = factory("hitl", "approve", escalation["id"], env=env)
    assert approved.returncode == 0, approved.stderr
    resumed = factory("resume", out["run_id"], "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert run_json(resumed)["status"] == "complete"


def test_tests_failing_in_another_teams_code_go_back_to_that_team(checked: dict[str, str], pg_url: str) -> None:
    # The backend imports and passes its own checks, but its server cannot start: QA's tests fail in its code.
    wrong = GOOD["backend/app.py"].replace(
        '    return ThreadingHTTPServer(("127.0.0.1", port), Handler)',
        '    raise RuntimeError("the link store is not configured")',
    )
    assert wrong != GOOD["backend/app.py"]
    backend = [result("backend-engineering", {"backend/app.py": wrong}), good("backend-engineering")]
    # What the teams learn goes to memory through the same model: those calls get answers of their own
    # (the extraction refuses them, which is reported and harmless), so the teams' queues stay theirs.
    script = {"teams": {"backend-engineering": backend, "qa-engineering": [good("qa-engineering")]},
              "purposes": {"memory": ["{}"] * 10}}  # fmt: skip
    write_script(checked, script)
    proc = factory("run", REQ, "--pipeline", PIPELINES["qa-engineering"], "--non-interactive", env=checked)
    assert proc.returncode == 0, proc.stderr
    # The live progress says what was checked, what went back to whom, and that it was kept.
    assert "[1/2] backend-engineering checks: 5 run, 5 passed" in proc.stderr
    assert "[2/2] qa-engineering checks:" in proc.stderr and "(failing: pytest)" in proc.stderr
    assert "[1/2] backend-engineering runs again: checks of qa-engineering failed in its files" in proc.stderr
    assert "[1/2] backend-engineering revised its files" in proc.stderr
    run_id = next(line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("run "))
    (revised,) = entries(pg_url, run_id, "stage.revised")
    assert revised["team"] == "backend-engineering" and "backend/app.py" in revised["artifacts"]
    fixed = Path(run_json_path(proc)) / "backend" / "app.py"
    assert fixed.read_text() == GOOD["backend/app.py"]  # the bundle holds the kept revision
    qa = [e for e in entries(pg_url, run_id, "stage.execution") if e["team"] == "qa-engineering"]
    assert [e["gate"]["verdict"] for e in qa] == ["send_back", "advance"]
    assert {r["check"]: r["tests"] for r in qa[1]["checks"]["reports"] if r["check"] == "pytest"} == {
        "pytest": {"passed": 3, "failed": 0, "errors": 0}
    }


def run_json_path(proc: Any) -> str:
    """The bundle folder a human-readable `factory run` printed."""
    return next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("artifacts: "))


def test_teams_list_shows_checks_and_sandbox_policy(checked: dict[str, str], tmp_path: Path) -> None:
    proc = factory("teams", "list", env=checked)
    assert proc.returncode == 0, proc.stderr
    assert "checks: python-syntax" in proc.stdout and "never runs code" in proc.stdout
    off = factory("teams", "list", "--json", env={**checked, "FACTORY_SANDBOX_EXECUTE": "false"})
    assert all(not t["sandbox"]["execute"] for t in json.loads(off.stdout))
    policy = tmp_path / "sandbox.toml"
    policy.write_text("[default]\nwall_s = 12\n\n[qa-engineering]\nexecute = false\n")
    shown = json.loads(
        factory("teams", "list", "--json", env={**checked, "FACTORY_SANDBOX_POLICY": str(policy)}).stdout
    )
    by_slug = {t["slug"]: t["sandbox"] for t in shown}
    assert by_slug["backend-engineering"]["wall_s"] == 12 and by_slug["backend-engineering"]["execute"]
    assert not by_slug["qa-engineering"]["execute"] and by_slug["qa-engineering"]["wall_s"] == 12
    for bad, said in [("[nobody]\nwall_s = 1\n", "is not a team"), ("[default]\nnetwork = true\n", "network"),
                      ("[default]\nwall_s = -1\n", "above 0"), ("[default\n", "not valid TOML")]:  # fmt: skip
        policy.write_text(bad)
        refused = factory("teams", "list", env={**checked, "FACTORY_SANDBOX_POLICY": str(policy)})
        assert refused.returncode == 2 and said in refused.stderr, (bad, refused.stderr)
