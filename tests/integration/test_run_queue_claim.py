"""The run queue's claim (teams.store_pg): the oldest movable run nobody holds, and only the movable
runs read to find it, however many finished runs the factory's history holds (migration 0008)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from teams.base import RunStatus
from teams.store_pg import _CLAIM, PostgresRunStore
from tests.integration.pools import migrated_pool

pytestmark = pytest.mark.integration
HISTORY = 5000  # finished runs


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresRunStore]:
    async with migrated_pool(pg_url) as pool:
        yield PostgresRunStore(pool)


def _runs(pg_url: str, rows: list[tuple[str, str, datetime]]) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO runs (id, requirement, pipeline, pipeline_name, status, created_at, updated_at)"
            " VALUES (%s, 'r', ARRAY['documentation'], 'custom', %s, %s, %s)",
            [(run_id, status, at, at) for run_id, status, at in rows],
        )
        conn.execute("ANALYZE runs")


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


async def test_claim_takes_the_oldest_movable_run_reading_only_the_movable_ones(
    store: PostgresRunStore, pg_url: str
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    _runs(pg_url, [(f"done-{n:05d}", "complete", start + timedelta(seconds=n)) for n in range(HISTORY)])
    _runs(pg_url, [
        ("queued-b", RunStatus.RUNNING.value, start + timedelta(days=2)),
        ("queued-a", RunStatus.RUNNING.value, start + timedelta(days=1)),
        ("decided", RunStatus.WAITING_HUMAN.value, start + timedelta(days=3)),
    ])  # fmt: skip
    movable = [RunStatus.RUNNING, RunStatus.WAITING_HUMAN]
    first = await store.claim(movable)
    assert first is not None and first.run_id == "queued-a"  # the oldest
    second = await store.claim(movable, exclude=["queued-b"])
    assert second is not None and second.run_id == "decided"  # queued-a is held now, queued-b excluded
    assert (await store.claim(movable)) is not None  # queued-b
    assert await store.claim(movable) is None  # every movable run is held
    assert await store.claim([RunStatus.COMPLETE], exclude=[]) is not None  # any status can be asked for

    params = {"statuses": [s.value for s in movable], "exclude": [], "owner": "explain", "ttl": 30}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        [(plan,)] = conn.execute(f"EXPLAIN (FORMAT JSON) {_CLAIM}", params).fetchall()
    nodes = _nodes((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    on_runs = [n for n in nodes if n.get("Relation Name") == "runs"]
    assert on_runs, nodes
    assert all(n["Node Type"] != "Seq Scan" for n in on_runs), [n["Node Type"] for n in on_runs]
