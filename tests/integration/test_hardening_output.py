"""Issue 13, items 2 and 3, through the real `factory` command on real PostgreSQL and Redis.

A model's result that PostgreSQL cannot store (a NUL, a lone surrogate) and artifact names that are
not one plain file inside the bundle (``.``, ``./x.md`` beside ``x.md``) are invalid output: repaired
or retried, then escalated; never a traceback, a run stuck in ``running``, or a file outside the bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.cli import factory, run_json
from tests.integration.conftest import write_script

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."
TEAM = "business-analysis"
PIPELINE = "business-analysis,documentation"
# The scripted model sends its answers as JSON text: these decode to a NUL and to a lone surrogate.
UNSTORABLE = {"nul": "\u0000", "surrogate": "\ud800"}


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FACTORY_OPERATOR": "ana"}


def complete(*names: str, content: str = "# Scope\n\nShort links, redirects, click counts.\n") -> dict[str, Any]:
    return {
        "status": "COMPLETE",
        "reasoning": "The scope is written.",
        "blockers": [],
        "assumptions_made": [],
        "verified_facts": [],
        "clarification_needed": None,
        "artifacts": [{"name": n, "kind": "markdown", "content": content} for n in names],
        "confidence": 0.9,
    }


def db_state(pg_url: str, run_id: str) -> tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with psycopg.connect(pg_url) as conn:
        run = conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()
        stages = conn.execute("SELECT team, status, attempts FROM stages WHERE run_id = %s ORDER BY idx", (run_id,))
        purposes = conn.execute(
            "SELECT purpose FROM usage_ledger WHERE run_id = %s AND team = %s ORDER BY id", (run_id, TEAM)
        )
        assert run is not None
        return run[0], stages.fetchall(), purposes.fetchall()


def assert_clean(proc: Any, env: dict[str, str], run_id: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    verify = factory("audit", "verify", run_id, env=env)
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr


def assert_bundle_matches_manifest(bundle: Path) -> dict[str, str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    hashes = {a["name"]: a["sha256"] for a in manifest["artifacts"]}
    for name, sha in hashes.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == sha, name
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert on_disk == {*hashes, "manifest.json"}  # no temporary or stray file, nothing unlisted
    return hashes


@pytest.mark.parametrize("kind", sorted(UNSTORABLE))
def test_unstorable_text_in_a_result_is_repaired_and_the_run_completes(
    env: dict[str, str], pg_url: str, kind: str
) -> None:
    bad = complete("analysis/scope.md", content=f"scope {UNSTORABLE[kind]} end")
    write_script(env, {"teams": {TEAM: [bad]}})  # the repair call gets the scripted valid answer
    proc = factory("run", REQ, "--json", "--pipeline", PIPELINE, env=env)
    assert proc.returncode == 0, proc.stderr
    out = run_json(proc)
    status, stages, purposes = db_state(pg_url, out["run_id"])
    assert status == "complete" and stages[0] == (TEAM, "complete", 1)
    assert [p for (p,) in purposes] == ["objective", "repair", "memory"]  # refused once, then repaired
    content = (Path(out["artifacts_dir"]) / "analysis" / "scope.md").read_text()
    assert "\x00" not in content and "\ufffd" not in content and "Scripted" in content
    assert_bundle_matches_manifest(Path(out["artifacts_dir"]))
    assert_clean(proc, env, out["run_id"])


@pytest.mark.parametrize("kind", sorted(UNSTORABLE))
def test_unstorable_text_every_time_escalates_and_the_answer_continues_the_run(
    env: dict[str, str], pg_url: str, kind: str
) -> None:
    bad = complete("analysis/scope.md", content=f"scope {UNSTORABLE[kind]} end")
    write_script(env, {"teams": {TEAM: [bad] * 6}})  # 3 executions of an answer and its repair
    proc = factory("run", REQ, "--json", "--pipeline", PIPELINE, "--non-interactive", env=env)
    assert proc.returncode == 3, proc.stderr
    out = run_json(proc)
    [escalation] = out["escalations"]
    assert escalation["kind"] == "blocked" and escalation["team"] == TEAM
    assert ("NUL character" if kind == "nul" else "lone surrogate") in escalation["question"]
    status, stages, _ = db_state(pg_url, out["run_id"])
    assert status == "waiting_human" and stages[0] == (TEAM, "waiting_human", 3)
    assert_clean(proc, env, out["run_id"])

    write_script(env, {})  # the next process's model answers validly
    answered = factory("hitl", "answer", escalation["id"], "Write plain text only.", env=env)
    assert answered.returncode == 0, answered.stderr
    assert "Traceback" not in answered.stderr
    status, stages, _ = db_state(pg_url, out["run_id"])
    assert status == "complete" and [s[1] for s in stages] == ["complete", "complete"]
    assert_clean(answered, env, out["run_id"])


def test_a_dot_and_two_spellings_of_one_file_are_refused_and_nothing_leaves_the_bundle(
    env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    place = tmp_path / "place"
    out_dir = place / "out"
    out_dir.mkdir(parents=True)
    (place / "keep.txt").write_text("not the factory's")
    before = sorted(os.listdir(place))
    answers = [
        {"tool": "write_artifact", "arguments": {"name": ".", "content": "replace the bundle"}},
        complete("."),  # the bundle folder itself: invalid output, repaired ...
        complete("./x.md", "x.md"),  # ... into one file under two names: still invalid, so the attempt fails
        complete("./x.md", "analysis/scope.md"),  # the retry: './x.md' is stored as 'x.md'
    ]
    write_script(env, {"teams": {TEAM: answers}})
    proc = factory("run", REQ, "--json", "--pipeline", PIPELINE, "--out", str(out_dir), env=env)
    assert proc.returncode == 0, proc.stderr
    out = run_json(proc)
    bundle = Path(out["artifacts_dir"])
    assert sorted(os.listdir(place)) == before and os.listdir(out_dir) == [out["run_id"]] and bundle.is_dir()
    assert (place / "keep.txt").read_text() == "not the factory's"
    hashes = assert_bundle_matches_manifest(bundle)
    assert "x.md" in hashes and "./x.md" not in hashes and "." not in hashes
    status, stages, _ = db_state(pg_url, out["run_id"])
    assert status == "complete" and stages[0] == (TEAM, "complete", 2)
    with psycopg.connect(pg_url) as conn:
        names = conn.execute("SELECT name FROM artifacts WHERE run_id = %s ORDER BY name", (out["run_id"],))
        stored = [n for (n,) in names.fetchall()]
    assert "x.md" in stored and not [n for n in stored if n.startswith(".") or "/." in n]
    assert_clean(proc, env, out["run_id"])


def test_a_dot_every_time_escalates_without_touching_the_bundle_or_its_parent(
    env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    out_dir = tmp_path / "place" / "out"
    out_dir.mkdir(parents=True)
    write_script(env, {"teams": {TEAM: [complete(".")] * 6}})
    proc = factory("run", REQ, "--json", "--pipeline", PIPELINE, "--out", str(out_dir), "--non-interactive", env=env)
    assert proc.returncode == 3, proc.stderr
    out = run_json(proc)
    assert os.listdir(tmp_path / "place") == ["out"]
    assert [p.name for p in out_dir.iterdir() if not p.is_dir()] == []  # the bundle was never made a file
    assert "names a folder" in out["escalations"][0]["question"]
    status, stages, _ = db_state(pg_url, out["run_id"])
    assert status == "waiting_human" and stages[0][1] == "waiting_human"
    assert_clean(proc, env, out["run_id"])
