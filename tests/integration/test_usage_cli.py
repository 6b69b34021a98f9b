"""Issue 14, item 5: ``factory usage`` through the real CLI on real PostgreSQL. Ledger rows (with
fallbacks and failed calls) are written by the run store itself; every figure is checked exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from factory.migrations import migrate
from routing.base import Fallback, UsageRecord
from teams.base import Run
from teams.store_pg import PostgresRunStore
from tests.integration.cli import factory, run_json

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GPT, QWEN, CLAUDE = "openai/gpt-x", "ollama_chat/qwen", "anthropic/claude-x"
RATE = Fallback(deployment="openai/gpt-x@https://api.example", kind="rate_limit", reason="429 slow down")
HANG = Fallback(deployment="openai/gpt-x@https://api.example", kind="timeout", reason="timed out after 30 s")
DOWN = Fallback(deployment="ollama_chat/qwen@http://gpu:11434", kind="server_error", reason="500")


def _call(
    run: str | None,
    team: str | None,
    alias: str,
    model: str,
    tokens: tuple[int, int],
    cost: float,
    latency: float,
    at: datetime,
    *,
    fallbacks: tuple[Fallback, ...] = (),
    ok: bool = True,
) -> UsageRecord:
    return UsageRecord(
        run_id=run,
        team=team,
        alias=alias,
        model=model,
        purpose="objective",
        tokens_in=tokens[0],
        tokens_out=tokens[1],
        cost_usd=cost,
        latency_ms=latency,
        ok=ok,
        error=None if ok else "every deployment failed",
        created_at=at,
        fallbacks=list(fallbacks),
    )


# Three runs, oldest first, and two calls outside any run (one before the oldest run, one after).
RUNS = {"run-old": T0, "run-a": T0 + timedelta(hours=1), "run-b": T0 + timedelta(hours=2)}
CALLS = [
    _call("run-b", "business-analysis", "factory/architect", GPT, (100, 50), 0.25, 100.0, T0 + timedelta(hours=2)),
    _call("run-b", "business-analysis", "factory/cheap", QWEN, (10, 5), 0.0, 300.0, RUNS["run-b"], fallbacks=(RATE,)),
    _call(
        "run-b", "solution-architecture", "factory/architect", "", (0, 0), 0.0, 500.0, RUNS["run-b"],
        fallbacks=(HANG, DOWN), ok=False,
    ),
    _call("run-b", "solution-architecture", "factory/architect", GPT, (200, 100), 0.5, 200.0, RUNS["run-b"]),
    _call("run-a", "business-analysis", "factory/fast", QWEN, (40, 20), 0.0, 50.0, RUNS["run-a"]),
    _call("run-old", "documentation", "factory/coder", CLAUDE, (1000, 1000), 2.0, 1000.0, RUNS["run-old"]),
    _call(None, None, "factory/fast", QWEN, (7, 3), 0.0, 70.0, T0 + timedelta(minutes=30)),  # factory ask
    _call(None, None, "factory/fast", QWEN, (9000, 9000), 9.0, 9.0, T0 - timedelta(days=1)),  # before every run
]  # fmt: skip


@pytest.fixture
async def ledger(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate(conn)
    async with AsyncConnectionPool(pg_url, open=False, kwargs={"autocommit": True}) as pool:
        store = PostgresRunStore(pool)
        for run_id, at in RUNS.items():
            run = Run(id=run_id, requirement="x", pipeline=["business-analysis"], pipeline_name="custom",
                      created_at=at, updated_at=at)  # fmt: skip
            async with store.lease(run_id) as lease:
                await store.create_run(run, lease=lease)
        for call in CALLS:
            await store.record(call)


def _figures(
    calls: int, failed: int, tokens_in: int, tokens_out: int, cost: float, fb: int, hops: int, p50: float | None
) -> dict[str, Any]:
    return {
        "calls": calls,
        "failed": failed,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cost_usd": cost,
        "fallback_calls": fb,
        "fallback_hops": hops,
        "latency_p50_ms": p50,
    }


def _usage(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = factory("usage", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return run_json(proc)


def _groups(report: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    return [(g["group"], {k: v for k, v in g.items() if k != "group"}) for g in report["groups"]]


@pytest.mark.usefixtures("ledger")
def test_one_run_by_team_alias_and_model(env: dict[str, str]) -> None:
    by_team = _usage(env, "--run", "run-b")
    assert by_team["by"] == "team" and by_team["runs"] == ["run-b"] and by_team["runless_since"] is None
    assert _groups(by_team) == [  # most expensive first
        ("solution-architecture", _figures(2, 1, 200, 100, 0.5, 1, 2, 350.0)),
        ("business-analysis", _figures(2, 0, 110, 55, 0.25, 1, 1, 200.0)),
    ]
    total = _figures(4, 1, 310, 155, 0.75, 2, 3, 250.0)  # p50 of 100, 200, 300, 500
    assert by_team["total"] == total

    by_alias = _usage(env, "--run", "run-b", "--by", "alias")
    assert _groups(by_alias) == [
        ("factory/architect", _figures(3, 1, 300, 150, 0.75, 1, 2, 200.0)),
        ("factory/cheap", _figures(1, 0, 10, 5, 0.0, 1, 1, 300.0)),
    ]
    assert by_alias["total"] == total

    by_model = _usage(env, "--run", "run-b", "--by", "model")
    assert _groups(by_model) == [
        (GPT, _figures(2, 0, 300, 150, 0.75, 0, 0, 150.0)),
        (QWEN, _figures(1, 0, 10, 5, 0.0, 1, 1, 300.0)),
        (None, _figures(1, 1, 0, 0, 0.0, 1, 2, 500.0)),  # no deployment answered
    ]
    assert by_model["total"] == total


@pytest.mark.usefixtures("ledger")
def test_last_n_runs_and_the_default(env: dict[str, str]) -> None:
    last2 = _usage(env, "--last", "2")
    assert last2["runs"] == ["run-b", "run-a"] and last2["runless_since"] is None
    assert last2["scope"] == {"run": None, "last": 2, "with_runless": False}
    assert dict(_groups(last2))["business-analysis"] == _figures(3, 0, 150, 75, 0.25, 1, 1, 100.0)
    assert last2["total"] == _figures(5, 1, 350, 175, 0.75, 2, 3, 200.0)  # run-old and runless calls left out

    default = _usage(env)  # the last 10 runs, and calls outside any run since the oldest of them
    assert default["runs"] == ["run-b", "run-a", "run-old"] and default["scope"]["with_runless"] is True
    assert datetime.fromisoformat(default["runless_since"]) == RUNS["run-old"]
    assert [g for g, _ in _groups(default)] == ["documentation", "solution-architecture", "business-analysis", None]
    assert dict(_groups(default))[None] == _figures(1, 0, 7, 3, 0.0, 0, 0, 70.0)  # the ask call, not the older one
    assert default["total"] == _figures(7, 1, 1357, 1178, 2.75, 2, 3, 200.0)


@pytest.mark.usefixtures("ledger")
def test_text_output_is_an_aligned_table(env: dict[str, str]) -> None:
    proc = factory("usage", "--by", "model", env=env)
    assert proc.returncode == 0, proc.stderr
    head, *table, runs = proc.stdout.splitlines()
    assert head.startswith("usage of the last 10 runs (3 found) and of calls outside any run since 2026-03-01")
    assert runs == "runs, newest first: run-b, run-a, run-old"
    assert len({len(line) for line in table}) == 1  # aligned
    assert table[0].split() == ["model", "calls", "failed", "tokens", "in", "tokens", "out", "cost", "usd",
                                "fell", "back", "hops", "p50", "ms"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows[CLAUDE] == ["1", "0", "1000", "1000", "2.0000", "0", "0", "1000.0"]
    assert rows["(none)"] == ["1", "1", "0", "0", "0.0000", "1", "2", "500.0"]
    assert rows["total"] == ["7", "1", "1357", "1178", "2.7500", "2", "3", "200.0"]
    assert list(rows)[-1] == "total"


async def test_an_empty_ledger_reports_zeros_not_nulls(env: dict[str, str], pg_url: str) -> None:
    report = _usage(env)
    assert report["runs"] == [] and report["groups"] == []
    assert report["total"] == _figures(0, 0, 0, 0, 0.0, 0, 0, None)
    assert "total  " in factory("usage", env=env).stdout
    async with AsyncConnectionPool(pg_url, open=False, kwargs={"autocommit": True}) as pool:  # migrated by the CLI
        await PostgresRunStore(pool).record(CALLS[-1])  # a call outside any run, long ago
    report = _usage(env)  # no run yet: every call outside a run counts
    assert report["runless_since"] is None and report["total"] == _figures(1, 0, 9000, 9000, 9.0, 0, 0, 9.0)
    assert _usage(env, "--last", "5")["total"]["calls"] == 0  # runs only


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--run", "no-such-run"], "no run 'no-such-run'; see"),
        (["--by", "foo"], "--by must be one of team, alias, model (got 'foo')"),
        (["--last", "0"], "--last must be a number of runs from 1 to 10000 (got 0)"),
        (["--last", "10001"], "from 1 to 10000"),
        (["--run", "run-b", "--last", "2"], "give --run ID or --last N, not both"),
        (["--run", ""], "--run needs a run id"),
    ],
)
@pytest.mark.usefixtures("ledger")
def test_bad_input_exits_2_with_what_to_give(env: dict[str, str], args: list[str], needle: str) -> None:
    proc = factory("usage", *args, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("factory: ") and needle in line, proc.stderr


def test_a_scripted_run_costs_zero_never_null(env: dict[str, str], pg_url: str) -> None:
    run = factory("run", "--pipeline", "business-analysis", "--json", "A tiny notes app", env=env)
    assert run.returncode == 0, run.stderr
    run_id = run_json(run)["run_id"]
    with psycopg.connect(pg_url) as conn:
        ledger = conn.execute(
            "SELECT count(*), sum(tokens_in), sum(tokens_out), count(*) FILTER (WHERE NOT ok),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FROM usage_ledger WHERE run_id = %s",
            (run_id,),
        ).fetchone()
    assert ledger is not None and ledger[0] >= 2  # the objective and the memory extraction, at least

    report = _usage(env, "--run", run_id)
    assert report["runs"] == [run_id]
    [(team, figures)] = _groups(report)
    expected = _figures(ledger[0], ledger[3], ledger[1], ledger[2], 0.0, 0, 0, ledger[4])
    assert team == "business-analysis" and figures == expected and report["total"] == expected
    by_model = _usage(env, "--run", run_id, "--by", "model")
    assert [g["group"] for g in by_model["groups"]] == ["factory-local/scripted"]
    costs = [g["cost_usd"] for g in by_model["groups"]] + [report["total"]["cost_usd"]]
    assert costs == [0.0, 0.0] and all(type(c) is float for c in costs)  # a local model's cost is 0.0, not null
    # runless_since (one run: no calls outside runs) and checks (the verification gate is off here)
    assert json.dumps(report).count("null") == 2 and report["checks"] is None
