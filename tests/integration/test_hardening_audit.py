"""Issue 13, items 3 (the audit's part), 6 and 7, on real PostgreSQL and through the real CLI: the
audit cannot be shortened quietly, a decision whose audit entry cannot be written is not made, every
decision has an author, and no limit of the search index can fail an append."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.migrations import migrate
from memory.audit_pg import SEARCH_PREFIX_CHARS, PostgresAuditLog
from tests.integration.cli import factory, run_json

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."


async def _pool(url: str) -> AsyncConnectionPool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
    await pool.open()
    return pool


def _superuser(url: str, *statements: str, params: tuple[Any, ...] = ()) -> None:
    """What only a superuser can do: switch the audit's guards off, change it, switch them on."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
        conn.execute("ALTER TABLE audit_heads DISABLE TRIGGER ALL")
        for statement in statements:
            conn.execute(statement.encode(), params if "%s" in statement else ())
        conn.execute("ALTER TABLE audit_entries ENABLE TRIGGER USER")
        conn.execute("ALTER TABLE audit_heads ENABLE TRIGGER ALL")


def _one_line_no_traceback(proc: Any) -> None:
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM audit_heads",
        "TRUNCATE audit_heads",
        "UPDATE audit_heads SET entries = 2",
        "UPDATE audit_heads SET entries = entries + 1",
        "UPDATE audit_heads SET head_sha256 = repeat('a', 64)",
        "UPDATE audit_heads SET run_id = 'run-y'",
        "INSERT INTO audit_heads VALUES ('run-y', 3, repeat('a', 64))",
        # a forged entry that does not continue the head (a fork, or a gap)
        "INSERT INTO audit_entries VALUES ('run-x', 9, 'k9', 'step', '{}', repeat('0', 64), repeat('1', 64), now())",
        "INSERT INTO audit_entries VALUES ('run-x', 4, 'k9', 'step', '{}', repeat('0', 64), repeat('1', 64), now())",
    ],
)
async def test_the_head_is_protected_like_the_entries(pg_url: str, statement: str) -> None:
    pool = await _pool(pg_url)
    async with pool:
        log = PostgresAuditLog(pool)
        for i in range(4):
            await log.append("run-x", f"k{i}", "step", {"i": i})
        with pytest.raises(psycopg.errors.RaiseException, match="audit"):
            async with pool.connection() as conn:
                await conn.execute(statement.encode())
        assert (await log.verify("run-x")).intact
        await log.append("run-x", "k4", "step", {"i": 4})  # appends go on as before
        report = await log.verify("run-x")
        assert report.intact and report.entries == 5


async def test_an_entry_inserted_around_audit_append_still_moves_the_head(pg_url: str) -> None:
    pool = await _pool(pg_url)
    async with pool:
        log = PostgresAuditLog(pool)
        first = await log.append("run-x", "k0", "step", {})
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO audit_entries VALUES ('run-x', 1, 'k1', 'step', '{}', %s, repeat('1', 64), now())",
                (first.sha256,),
            )
        report = await log.verify("run-x")
        assert not report.intact and report.problems == ["entry 1 (step) was altered: its hash does not match"]
        third = await log.append("run-x", "k2", "step", {})  # the head followed: later appends still work
        assert third.seq == 2


def test_verify_fails_when_the_head_is_removed(env: dict[str, str], pg_url: str) -> None:
    out = run_json(factory("run", REQ, "--json", "--pipeline", "business-analysis,documentation", env=env))
    run_id = out["run_id"]
    assert factory("audit", "verify", run_id, env=env).returncode == 0
    _superuser(pg_url, "DELETE FROM audit_heads WHERE run_id = %s", params=(run_id,))
    verify = factory("audit", "verify", run_id, env=env)
    assert verify.returncode == 1 and "TAMPERED" in verify.stdout and "head is missing" in verify.stdout


def test_verify_compares_the_chain_with_the_manifest_anchor(env: dict[str, str], pg_url: str) -> None:
    out = run_json(factory("run", REQ, "--json", "--pipeline", "business-analysis,documentation", env=env))
    run_id, entries = out["run_id"], out["audit"]["entries"]
    manifest_path = Path(out["artifacts_dir"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert (manifest["audit_entries"], manifest["audit_head_sha256"]) == (entries, out["audit"]["head_sha256"])
    # The tail is cut and the head moved back onto the new last entry: the database is consistent.
    _superuser(
        pg_url,
        "DELETE FROM audit_entries WHERE run_id = %s AND seq >= 3",
        "UPDATE audit_heads h SET entries = 3, head_sha256 = e.sha256 FROM audit_entries e"
        " WHERE h.run_id = %s AND e.run_id = h.run_id AND e.seq = 2",
        params=(run_id,),
    )
    verify = factory("audit", "verify", run_id, "--json", env=env)
    assert verify.returncode == 1, verify.stderr
    report = json.loads(verify.stdout)
    assert not report["intact"] and report["entries"] == 3
    assert [p for p in report["problems"] if "manifest anchor" in p and f"covers {entries} entries" in p]

    manifest_path.write_text("{not json")  # the anchor itself damaged
    damaged = factory("audit", "verify", run_id, env=env)
    assert damaged.returncode == 1 and "manifest anchor" in damaged.stdout and "cannot be read" in damaged.stdout


def _waiting_approval(env: dict[str, str]) -> tuple[dict[str, str], str, str]:
    env = {**env, "FACTORY_CONFIDENCE_FLOOR": "0.95", "FACTORY_OPERATOR": "ana"}
    started = factory("run", REQ, "--pipeline", "business-analysis", "--json", env=env)
    assert started.returncode == 3, started.stderr
    out = run_json(started)
    [escalation] = out["escalations"]
    return env, out["run_id"], escalation["id"]


def _escalation(pg_url: str, escalation_id: str) -> tuple[Any, ...]:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT status, version, decided_by FROM escalations WHERE id = %s", (escalation_id,))
        found = row.fetchone()
    assert found is not None
    return tuple(found)


def test_an_approval_whose_audit_entry_cannot_be_written_is_not_made(env: dict[str, str], pg_url: str) -> None:
    env, run_id, escalation_id = _waiting_approval(env)
    # A squatter takes the position the decision's entry needs (written with the guards off).
    _superuser(
        pg_url,
        "INSERT INTO audit_entries SELECT run_id, entries, 'squatter', 'step', '{}', head_sha256, repeat('1', 64),"
        " now() FROM audit_heads WHERE run_id = %s",
        params=(run_id,),
    )
    approved = factory("hitl", "approve", escalation_id, "--no-resume", env=env)
    assert approved.returncode == 1, (approved.stdout, approved.stderr)
    _one_line_no_traceback(approved)
    assert f"{escalation_id} was left as it was" in approved.stderr and "audit verify" in approved.stderr
    assert _escalation(pg_url, escalation_id) == ("open", 0, None)
    with psycopg.connect(pg_url) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM audit_entries WHERE run_id = %s", (run_id,))]
    assert "escalation.decided" not in kinds
    rejected = factory("hitl", "reject", escalation_id, "--reason", "redo it", "--no-resume", env=env)
    assert rejected.returncode == 1 and _escalation(pg_url, escalation_id) == ("open", 0, None)
    _one_line_no_traceback(rejected)


def test_a_decision_without_a_plain_author_is_refused(env: dict[str, str], pg_url: str) -> None:
    env, _run_id, escalation_id = _waiting_approval(env)
    attempts = [["approve", escalation_id, "--no-resume", "--by", by] for by in ("", "\x1b]0;owned\x07", "a" * 201)]
    attempts += [
        [*args, "--by", "   "]
        for args in (
            ["approve", escalation_id],
            ["reject", escalation_id, "--reason", "redo"],
            ["defer", escalation_id],
            ["batch-approve", escalation_id],
            ["answer", escalation_id, "text"],
        )
    ]
    attempts.append(["approve", escalation_id, "--by", "ana\rbo"])
    for args in attempts:
        refused = factory("hitl", *args, env=env)
        assert refused.returncode == 2, (args, refused.stderr)
        _one_line_no_traceback(refused)
        assert "author" in refused.stderr and "\x1b" not in refused.stderr and "\r" not in refused.stderr
    assert _escalation(pg_url, escalation_id) == ("open", 0, None)


def test_the_author_is_checked_before_any_service_starts(env: dict[str, str], pg_url: str) -> None:
    env, _run_id, escalation_id = _waiting_approval(env)
    blank_operator = factory("hitl", "approve", escalation_id, env={**env, "FACTORY_OPERATOR": "  "})
    assert blank_operator.returncode == 2 and "FACTORY_OPERATOR" in blank_operator.stderr
    _one_line_no_traceback(blank_operator)
    nowhere = {**env, "FACTORY_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}  # nothing listens there
    answered = factory("hitl", "answer", escalation_id, "yes", "--by", " ", env=nowhere)
    assert answered.returncode == 2 and "author" in answered.stderr
    assert _escalation(pg_url, escalation_id) == ("open", 0, None)
    approved = factory("hitl", "approve", escalation_id, "--by", "  bo  ", "--no-resume", env=env)
    assert approved.returncode == 0, approved.stderr
    assert _escalation(pg_url, escalation_id) == ("approved", 1, "bo")


def _adversarial(chars: int) -> str:
    """The text that costs a tsvector most per character: hyphenated pairs of distinct 4-byte letters
    (each letter indexed twice, in the whole word and as a part)."""
    letters = [chr(c) for c in range(0x20000, 0x2A6DF)]
    pairs = (f"{letters[i % len(letters)]}{letters[i // len(letters)]}" for i in range(chars))
    words = []
    total = 0
    for a, b in zip(pairs, pairs, strict=False):
        words.append(f"{a}-{b}")
        total += len(words[-1]) + 1
        if total >= chars:
            break
    return " ".join(words)


async def test_a_huge_payload_is_appended_and_searched(env: dict[str, str], pg_url: str) -> None:
    rng = random.Random(13)
    vocabulary = [f"{rng.choice('bcdfghjklmnp')}{rng.choice('aeiou')}{i}" for i in range(200_000)]
    words = " ".join(rng.choice(vocabulary) for _ in range(130_000))
    payload = {"artifact": f"zanzibarquokka {words}", "other": _adversarial(300_000)}
    assert len(json.dumps(payload, ensure_ascii=False)) > 900_000
    pool = await _pool(pg_url)
    async with pool:
        log = PostgresAuditLog(pool)
        entry = await log.append("run-big", "stage.0.complete", "stage.complete", payload)
        assert len(entry.payload) > 900_000
        worst = await log.append("run-big", "worst", "step", {"text": _adversarial(SEARCH_PREFIX_CHARS * 2)})
        assert worst.seq == 1 and (await log.verify("run-big")).intact
        [hit] = await log.search("zanzibarquokka")
        assert (hit.run_id, hit.seq) == ("run-big", 0) and "zanzibarquokka" in hit.excerpt
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'audit_entries'")
            definitions = " ".join(r[0] for r in await cur.fetchall())
        assert f'"left"(payload, {SEARCH_PREFIX_CHARS})' in definitions
        assert "to_tsvector('simple'::regconfig, payload)" not in definitions
    found = factory("audit", "search", "zanzibarquokka", "--json", env=env)
    assert found.returncode == 0, found.stderr
    assert [(h["run_id"], h["seq"]) for h in json.loads(found.stdout)] == [("run-big", 0)]


async def test_the_anchor_can_follow_each_committed_stage_and_never_moves_back(tmp_path: Path) -> None:
    from memory.audit_memory import InMemoryAuditLog
    from teams.base import Run
    from teams.snapshot import anchor_manifest, verify_run

    log = InMemoryAuditLog()
    entries = [await log.append("run-a", f"k{i}", "step", {"i": i}) for i in range(3)]
    now = datetime.now(UTC)
    run = Run(
        id="run-a", requirement=REQ, pipeline=["documentation"], pipeline_name="documentation",
        artifacts_dir=str(tmp_path), created_at=now, updated_at=now,
    )  # fmt: skip
    assert (await verify_run(log, run)).intact  # no manifest yet: nothing to compare with
    anchor_manifest(tmp_path, "run-a", entries[2])
    anchor_manifest(tmp_path, "run-a", entries[1])  # an idempotent re-append returns an older entry
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["run_id"], manifest["audit_entries"]) == ("run-a", 3)
    assert (await verify_run(log, run)).intact
    log._chains["run-a"].pop()  # the tail cut and the head moved back with it: only the anchor can tell
    log._heads["run-a"] = (2, entries[1].sha256)
    report = await verify_run(log, run)
    assert not report.intact and any("manifest anchor" in p for p in report.problems)
