"""The `factory` CLI against real PostgreSQL+pgvector and real Redis, scripted model via LiteLLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis.asyncio import Redis

from tests.integration.cli import factory, run_json
from tests.integration.conftest import write_script

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."


async def test_phase1_run_completes_on_real_services(
    env: dict[str, str], pg_url: str, redis: Redis, redis_prefix: str
) -> None:
    proc = factory("run", REQ, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = run_json(proc)
    assert out["status"] == "complete" and out["escalations"] == [] and out["error"] is None
    assert [s["team"] for s in out["stages"]] == [
        "business-analysis", "solution-architecture", "backend-engineering", "qa-engineering", "documentation"
    ]  # fmt: skip
    for stage in out["stages"]:
        assert stage["status"] == "complete" and stage["attempts"] == 1 and stage["tokens_in"] > 0
        assert stage["model"].endswith("factory-local/scripted") and stage["duration_ms"] >= 0
    bundle = Path(out["artifacts_dir"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(manifest["artifacts"]) == 9 and (bundle / "qa" / "test_app.py").is_file()
    assert out["audit"]["entries"] == 12

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT team, alias, model, ok, purpose FROM usage_ledger WHERE run_id = %s", (out["run_id"],)
        ).fetchall()
        status = conn.execute("SELECT status FROM runs WHERE id = %s", (out["run_id"],)).fetchone()
        kept = conn.execute(
            "SELECT bank, kind, count(*) FROM memory_items WHERE run_id = %s GROUP BY bank, kind", (out["run_id"],)
        ).fetchall()
    assert all(r[3] and r[2] == "factory-local/scripted" for r in rows)
    # one call per stage for the objective, one factory/cheap call per stage to extract what it learned
    assert sorted(r[4] for r in rows) == ["memory"] * 5 + ["objective"] * 5
    assert {r[1] for r in rows if r[4] == "memory"} == {"factory/cheap"}
    banks = {(bank, kind): n for bank, kind, n in kept}
    assert banks[("factory-shared-world", "artifact")] >= 5  # artifact chunks (near-duplicates merge)
    assert {bank for bank, kind in banks if kind == "mental_model"} == set(out_teams(out))
    assert status == ("complete",)

    events = await redis.xrange(f"{redis_prefix}events:{out['run_id']}")
    types = [fields[b"type"].decode() for _id, fields in events]
    assert types[0] == "run.started" and types[-1] == "run.completed" and types.count("stage.completed") == 5

    verify = factory("audit", "verify", out["run_id"], env=env)
    assert verify.returncode == 0 and "intact" in verify.stdout

    found = factory("audit", "search", "URL shortener", "--json", env=env)
    assert found.returncode == 0 and out["run_id"] in {h["run_id"] for h in json.loads(found.stdout)}
    assert "nothing in the audit matches" in factory("audit", "search", "zebra-quokka", env=env).stdout
    asked = factory("ask", "What did the documentation team write?", "--run", out["run_id"], "--json", env=env)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["citations"] and all(c["run_id"] == out["run_id"] for c in answer["citations"])
    assert factory("ask", "anything", "--run", "no-such-run", env=env).returncode == 2


def test_blocked_team_exits_3_with_an_escalation_row(env: dict[str, str], pg_url: str) -> None:
    blocked = {
        "status": "BLOCKED", "reasoning": "cannot pick a store", "blockers": ["no database decision"],
        "assumptions_made": [], "verified_facts": [], "clarification_needed": None, "artifacts": [], "confidence": 0.1,
    }  # fmt: skip
    write_script(env, {"teams": {"backend-engineering": [blocked]}})
    proc = factory("run", REQ, "--json", "--non-interactive", env=env)
    assert proc.returncode == 3, proc.stderr
    out = run_json(proc)
    assert out["status"] == "waiting_human"
    [esc] = out["escalations"]
    assert (esc["kind"], esc["priority"], esc["team"]) == ("blocked", "high", "backend-engineering")
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT status, kind, question FROM escalations WHERE id = %s", (esc["id"],)).fetchone()
    assert row is not None and row[:2] == ("open", "blocked") and "no database decision" in row[2]
    listed = json.loads(factory("hitl", "list", "--json", env=env).stdout)
    assert [e["id"] for e in listed] == [esc["id"]]
    assert {
        "id",
        "run_id",
        "kind",
        "priority",
        "status",
        "team",
        "question",
        "sla_deadline",
        "escalation_level",
    } <= set(listed[0])


def test_audit_verify_exits_1_after_tampering(env: dict[str, str], pg_url: str) -> None:
    out = run_json(factory("run", REQ, "--json", "--pipeline", "business-analysis,documentation", env=env))
    assert factory("audit", "verify", out["run_id"], env=env).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the superuser turns the trigger off
        conn.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_immutable")
        conn.execute(
            "UPDATE audit_entries SET payload = replace(payload, 'business', 'b') WHERE run_id = %s AND seq = 1",
            (out["run_id"],),
        )
        conn.execute("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_immutable")
    verify = factory("audit", "verify", out["run_id"], env=env)
    assert verify.returncode == 1 and "TAMPERED" in verify.stdout and "altered" in verify.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", ""], "requirement is empty"),
        (["run", "  \n "], "requirement is empty"),
        (["run", "x" * (64 * 1024 + 10)], "over the 65536-byte limit"),
        (["run", REQ, "--pipeline", "phase9"], "unknown team 'phase9'"),
        (["run", REQ, "--pipeline", "qa-engineering,nobody"], "unknown team 'nobody'"),
        (["audit", "verify", "run-does-not-exist"], "no run"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    env: dict[str, str], pg_url: str, args: list[str], needle: str
) -> None:
    proc = factory(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not Path(env["FACTORY_DATA_DIR"], "runs").exists()
    with psycopg.connect(pg_url) as conn:
        exists = conn.execute("SELECT to_regclass('runs')").fetchone()
        count = conn.execute("SELECT count(*) FROM runs").fetchone() if exists and exists[0] else (0,)
    assert count == (0,)


def test_requirement_from_stdin(env: dict[str, str]) -> None:
    proc = factory("run", "-", "--json", "--pipeline", "documentation", env=env, stdin=REQ)
    assert proc.returncode == 0, proc.stderr
    assert run_json(proc)["status"] == "complete"


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        (
            "FACTORY_DATABASE_URL",
            "postgresql://factory@127.0.0.1:1/nowhere",
            "PostgreSQL at postgresql://127.0.0.1:1/nowhere is unreachable",
        ),
        ("FACTORY_REDIS_URL", "redis://127.0.0.1:1/0", "Redis at redis://127.0.0.1:1/0 is unreachable"),
    ],
)
def test_unreachable_configured_service_exits_1_and_says_which(
    env: dict[str, str], variable: str, value: str, needle: str
) -> None:
    proc = factory("run", REQ, env={**env, variable: value, "FACTORY_CONNECT_TIMEOUT_S": "2"})
    assert proc.returncode == 1
    assert needle in proc.stderr and "unset it to use the embedded" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_teams_list_json_shows_the_roster(env: dict[str, str]) -> None:
    teams = json.loads(factory("teams", "list", "--json", env=env).stdout)
    assert len(teams) == 17 and teams[0]["slug"] == "product-management" and teams[-1]["slug"] == "documentation"
    assert all(t["alias"].startswith("factory/") and t["produces"] and t["acceptance_criteria"] for t in teams)
    assert all(set(t["identity"]) == {"SOUL.md", "AGENTS.md", "TOOLS.md"} and t["goal"] for t in teams)
    by_slug = {t["slug"]: t for t in teams}
    assert {p["name"] for p in by_slug["api-design"]["produces"]} >= {"api/openapi.yaml"}
    assert by_slug["solution-architecture"]["alias"] == "factory/architect"
    assert all(set(t["reads"]) <= set(list(by_slug)[: list(by_slug).index(s)]) for s, t in by_slug.items())


def test_doctor_reports_services_model_and_limits(env: dict[str, str]) -> None:
    proc = factory("doctor", "--json", env={**env, "FACTORY_RETRY_BUDGET": "4"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["usable"] and checks["postgres"]["ok"] and "pgvector 0.8.5" in checks["postgres"]["detail"]
    assert checks["redis"]["ok"] and "configured" in checks["redis"]["detail"]
    assert report["limits"]["retry_budget"] == 4 and report["limits"]["confidence_floor"] == 0.6


def test_doctor_exits_1_when_a_service_is_unreachable(env: dict[str, str]) -> None:
    proc = factory(
        "doctor", env={**env, "FACTORY_REDIS_URL": "redis://127.0.0.1:1/0", "FACTORY_CONNECT_TIMEOUT_S": "1"}
    )
    assert proc.returncode == 1 and "BAD services" in proc.stdout and "redis://127.0.0.1:1/0" in proc.stdout


def test_bad_setting_is_an_input_error(env: dict[str, str]) -> None:
    proc = factory("doctor", env={**env, "FACTORY_RETRY_BUDGET": "many"})
    assert proc.returncode == 2 and "invalid setting retry_budget" in proc.stderr


def test_up_reports_where_the_services_are(env: dict[str, str]) -> None:
    proc = factory("up", "--services-only", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "postgres: configured · redis: configured · models: factory-local/scripted (scripted: test only)" in (
        proc.stdout
    )


def test_full_pipeline_and_cli_revise(env: dict[str, str], pg_url: str) -> None:
    full = run_json(factory("run", REQ, "--json", "--pipeline", "full", env=env))
    assert full["status"] == "complete" and len(full["stages"]) == 17
    proc = factory(
        "revise", full["run_id"], "--from", "security-engineering", "--feedback", "Add rate limits.", "--json", env=env
    )
    assert proc.returncode == 0, proc.stderr
    rev = run_json(proc)
    assert rev["status"] == "complete" and [s["attempts"] for s in rev["stages"]] == [0] * 13 + [1] * 4
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT parent_run_id FROM runs WHERE id = %s", (rev["run_id"],)).fetchone() == (
            full["run_id"],
        )
    assert factory("audit", "verify", full["run_id"], env=env).returncode == 0
    bad = factory("revise", full["run_id"], "--from", "nobody", "--feedback", "x", env=env)
    assert bad.returncode == 2 and "not in run" in bad.stderr


def out_teams(out: dict[str, Any]) -> list[str]:
    return [s["team"] for s in out["stages"]]
