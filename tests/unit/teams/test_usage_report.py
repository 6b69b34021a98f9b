"""The usage report's scope checks, its model and its text table (no database: the figures given)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from factory import cli_usage
from factory.errors import InputError
from teams.usage_report import (
    DEFAULT_LAST,
    MAX_LAST,
    USAGE_BY,
    UsageGroup,
    UsageReport,
    UsageScope,
    UsageTotals,
    usage_scope,
)


def test_scope_defaults_to_the_last_runs_and_calls_outside_runs() -> None:
    assert usage_scope() == (UsageScope(last=DEFAULT_LAST, with_runless=True), "team")
    assert usage_scope(last=3, by="model") == (UsageScope(last=3, with_runless=False), "model")
    assert usage_scope(run="run-1", by="alias") == (UsageScope(run="run-1", with_runless=False), "alias")
    assert usage_scope(last=MAX_LAST)[0].last == MAX_LAST
    assert USAGE_BY == ("team", "alias", "model")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"by": "foo"}, "--by must be one of team, alias, model (got 'foo')"),
        ({"by": "Team"}, "one of team, alias, model"),
        ({"last": 0}, "--last must be a number of runs from 1 to 10000 (got 0)"),
        ({"last": -5}, "(got -5)"),
        ({"last": MAX_LAST + 1}, "from 1 to 10000"),
        ({"run": "r", "last": 2}, "give --run ID or --last N, not both"),
        ({"run": "  "}, "--run needs a run id"),
        ({"run": "r" * 201}, "1 to 200 characters"),
    ],
)
def test_bad_scope_is_an_input_error_saying_what_to_give(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InputError) as caught:
        usage_scope(**kwargs)  # type: ignore[arg-type]
    assert needle in str(caught.value) and caught.value.exit_code == 2


def test_the_cli_help_quotes_the_report_bounds() -> None:
    assert (cli_usage.DEFAULT_LAST, cli_usage.MAX_LAST) == (DEFAULT_LAST, MAX_LAST)


def _report(**scope: object) -> UsageReport:
    groups = [
        UsageGroup(group="solution-architecture", calls=12, failed=1, tokens_in=123456, tokens_out=7890,
                   cost_usd=1.23456, fallback_calls=2, fallback_hops=3, latency_p50_ms=1234.56),
        UsageGroup(group="business-analysis", calls=3, tokens_in=10, tokens_out=5, cost_usd=0.0, latency_p50_ms=2.0),
        UsageGroup(group=None, calls=1, failed=1, fallback_calls=1, fallback_hops=2, latency_p50_ms=500.0),
    ]  # fmt: skip
    total = UsageTotals(calls=16, failed=2, tokens_in=123466, tokens_out=7895, cost_usd=1.23456, fallback_calls=3,
                        fallback_hops=5, latency_p50_ms=400.0)  # fmt: skip
    return UsageReport(
        by="team",
        scope=UsageScope.model_validate(scope or {"with_runless": True}),
        runs=["run-2", "run-1"],
        runless_since=datetime(2026, 3, 1, 12, 0, tzinfo=UTC) if not scope else None,
        groups=groups,
        total=total,
    )


def test_table_is_aligned_with_four_decimal_cost_and_a_total_line() -> None:
    lines = _report().table()
    assert lines == [
        "team                   calls  failed  tokens in  tokens out  cost usd  fell back  hops  p50 ms",
        "solution-architecture     12       1     123456        7890    1.2346          2     3  1234.6",
        "business-analysis          3       0         10           5    0.0000          0     0     2.0",
        "(none)                     1       1          0           0    0.0000          1     2   500.0",
        "total                     16       2     123466        7895    1.2346          3     5   400.0",
    ]


def test_empty_report_shows_zero_cost_and_no_median() -> None:
    report = UsageReport(by="model", scope=UsageScope(last=5), runs=[], groups=[], total=UsageTotals())
    assert report.table()[1].split() == ["total", "0", "0", "0", "0", "0.0000", "0", "0", "-"]
    dumped = report.model_dump(mode="json")
    assert dumped["total"]["cost_usd"] == 0.0 and dumped["total"]["latency_p50_ms"] is None
    assert report.describe() == "usage of the last 5 runs (0 found), by model"


def test_describe_says_which_calls_are_covered() -> None:
    assert _report().describe() == (
        "usage of the last 10 runs (2 found) and of calls outside any run since 2026-03-01 12:00:00 UTC, by team"
    )
    assert _report(run="run-2").describe() == "usage of run run-2, by team"
    assert _report(last=2).describe() == "usage of the last 2 runs (2 found), by team"


def test_json_has_groups_and_a_total_and_never_a_null_cost() -> None:
    dumped = json.loads(json.dumps(_report().model_dump(mode="json")))
    assert set(dumped) == {"by", "scope", "runs", "runless_since", "groups", "total", "checks"}
    assert [g["group"] for g in dumped["groups"]] == ["solution-architecture", "business-analysis", None]
    assert all(isinstance(g["cost_usd"], float) for g in [*dumped["groups"], dumped["total"]])
    assert dumped["total"]["cost_usd"] == 1.23456 and dumped["runless_since"] == "2026-03-01T12:00:00Z"
