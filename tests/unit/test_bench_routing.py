"""``bench/routing.py`` runs end to end at a tiny size: every figure, goal and verdict is in its JSON,
and the counts it reports are the router's real behaviour (no timing is asserted: this machine's
speed is not the code's)."""

from __future__ import annotations

import json

import pytest

from bench.routing import GOALS, Options, bench, parse


async def test_a_tiny_run_reports_every_figure_and_the_cooled_deployment_is_left_alone() -> None:
    report = await bench(
        Options(calls=3, warmup=1, fallback_calls=3, outage_s=0.6, interval_ms=50, hang_timeout_s=0.2, profile_calls=2)
    )
    json.dumps(report)  # printable as it is
    assert set(report) == {
        "machine",
        "options",
        "routed_vs_bare",
        "fallback_after_429",
        "outage",
        "goals",
        "pass",
        "seconds",
    }
    assert {"cpu_count", "python", "litellm"} <= set(report["machine"])
    assert report["goals"] == GOALS
    assert set(report["pass"]) == {
        "routed_over_bare_p50",
        "fallback_excess_from_429_p50_ms",
        "fallback_excess_whole_call_p50_ms",
        "calls_to_a_after_first_cooldown",
    }
    assert all(isinstance(v, bool) for v in report["pass"].values())

    overhead = report["routed_vs_bare"]
    assert overhead["routed"]["n"] == overhead["bare"]["n"] == 3
    assert overhead["requests_served"] == 2 * (1 + 3)  # warm-up and measured, both variants, nothing retried
    assert overhead["routed_over_bare_p50"] > 0

    fallback = report["fallback_after_429"]
    assert {"fallback_call", "from_429_to_answer", "b_alone", "a_429_alone_bare"} <= set(fallback)
    assert fallback["requests_to_a"] == 2 * (1 + 3)  # every fallback sample and every bare 429 really reached A

    assert set(report["outage"]) == {
        "error_500/default",
        "error_500/allowed_fails_2",
        "hang/default",
        "hang/allowed_fails_2",
    }
    for case in report["outage"].values():
        assert case["calls"] == 12 and case["failed_calls"] == 0  # B answered every call
        assert case["first_cooldown_after_s"] is not None
        assert case["calls_to_a_after_first_cooldown"] == 0
    errors = report["outage"]["error_500/default"], report["outage"]["error_500/allowed_fails_2"]
    for case in errors:  # a 500 is answered at once: the router's count is the server's
        assert case["calls_reaching_a"] == case["calls_trying_a"] >= 1 + case["policy"]["allowed_fails"]
    assert report["pass"]["calls_to_a_after_first_cooldown"] is True


def test_options_are_bounded_with_a_message_saying_what_to_give() -> None:
    assert parse(["--calls", "5", "--outage-s", "2"]) == Options(calls=5, outage_s=2.0)
    with pytest.raises(SystemExit, match="--calls"):
        Options(calls=0).check()
    with pytest.raises(SystemExit, match="--outage-s"):
        Options(interval_ms=0).check()
    with pytest.raises(SystemExit) as bad:
        parse(["--warmup", "-1"])
    assert bad.value.code == 2  # as argparse's own errors
