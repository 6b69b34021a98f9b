"""The Prometheus instrument: live events and model calls in, the parsed exposition out; labels stay
bounded; garbage never raises; the snapshot's gauges; ``/metrics`` over real HTTP."""

from __future__ import annotations

import math
import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from factory.errors import ConfigError
from observability.base import Event, ModelCall
from observability.metrics import MAX_PENDING_STAGES, Metrics, Snapshot, serve_metrics

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TEAMS = ("business-analysis", "qa-engineering")


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    payload, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(payload.decode()):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def series(metrics: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples(metrics).items() if n == name}


def ev(event_type: str, /, run_id: str = "run-1", at: datetime = T0, **data: Any) -> Event:
    return Event(type=event_type, run_id=run_id, data=data, at=at)


def call(team: str | None = "qa-engineering", alias: str = "factory/coder", **over: Any) -> ModelCall:
    fields: dict[str, Any] = {
        "run_id": "run-1", "team": team, "alias": alias, "model": "openai/gpt-4o", "purpose": "stage",
        "tokens_in": 100, "tokens_out": 20, "cost_usd": 0.25, "latency_ms": 1500.0, "ok": True, "ended_at": T0,
    }  # fmt: skip
    return ModelCall(**(fields | over))


async def test_run_endings_are_counted_by_status_and_start_at_zero() -> None:
    m = Metrics(teams=TEAMS)
    assert value(m, "factory_runs_finished_total", status="failed") == 0  # present before the first failure
    for kind in ("run.completed", "run.completed", "run.failed", "run.cancelled", "run.waiting_human"):
        await m.emit(ev(kind, stage=1, team="qa-engineering"))
    await m.emit(ev("run.started"))  # not an ending
    assert series(m, "factory_runs_finished_total") == {
        frozenset({("status", "complete")}): 2,
        frozenset({("status", "failed")}): 1,
        frozenset({("status", "cancelled")}): 1,
        frozenset({("status", "waiting_human")}): 1,
    }


async def test_stage_durations_are_observed_per_team_from_start_to_completion() -> None:
    m = Metrics(teams=TEAMS)
    await m.emit(ev("stage.started", stage=0, team="business-analysis"))
    await m.emit(ev("stage.started", run_id="run-2", stage=0, team="business-analysis"))
    await m.emit(ev("stage.completed", at=T0 + timedelta(seconds=4), stage=0, team="business-analysis"))
    await m.emit(
        ev("stage.completed", run_id="run-2", at=T0 + timedelta(seconds=40), stage=0, team="business-analysis")
    )
    await m.emit(ev("stage.started", stage=1, team="qa-engineering"))
    await m.emit(ev("stage.completed", at=T0 + timedelta(seconds=0.3), stage=1, team="qa-engineering"))
    name = "factory_stage_duration_seconds"
    assert value(m, f"{name}_count", team="business-analysis") == 2
    assert value(m, f"{name}_sum", team="business-analysis") == 44
    assert value(m, f"{name}_bucket", team="business-analysis", le="5.0") == 1
    assert value(m, f"{name}_bucket", team="business-analysis", le="60.0") == 2
    assert value(m, f"{name}_count", team="qa-engineering") == 1
    assert value(m, "factory_stages_ended_total", team="qa-engineering", outcome="complete") == 1
    assert not any("run" in dict(labels) for labels in series(m, f"{name}_count"))  # never a run id


async def test_a_stage_that_escalates_or_fails_is_counted_so_and_observes_no_duration() -> None:
    m = Metrics(teams=TEAMS)
    await m.emit(ev("stage.started", stage=0, team="business-analysis"))
    await m.emit(ev("escalation.opened", stage=0, id="e1", kind="blocked", priority="high", team="business-analysis"))
    await m.emit(ev("stage.started", stage=1, team="qa-engineering"))
    await m.emit(ev("run.failed", stage=1, team="qa-engineering", error="boom"))
    # A completion without its start (another process started the stage) counts, without a duration.
    await m.emit(ev("stage.completed", stage=0, team="business-analysis"))
    assert value(m, "factory_stages_ended_total", team="business-analysis", outcome="escalated") == 1
    assert value(m, "factory_stages_ended_total", team="qa-engineering", outcome="failed") == 1
    assert value(m, "factory_stages_ended_total", team="business-analysis", outcome="complete") == 1
    assert series(m, "factory_stage_duration_seconds_count") == {}
    assert value(m, "factory_escalations_opened_total", kind="blocked", priority="high") == 1


async def test_stages_started_and_never_ended_are_forgotten_beyond_the_bound() -> None:
    m = Metrics(teams=TEAMS)
    for i in range(MAX_PENDING_STAGES + 50):
        await m.emit(ev("stage.started", run_id=f"run-{i}", stage=0, team="qa-engineering"))
    assert len(m._started) == MAX_PENDING_STAGES
    await m.emit(ev("stage.completed", run_id="run-0", at=T0 + timedelta(seconds=1), stage=0, team="qa-engineering"))
    last = f"run-{MAX_PENDING_STAGES + 49}"
    await m.emit(ev("stage.completed", run_id=last, at=T0 + timedelta(seconds=2), stage=0, team="qa-engineering"))
    assert value(m, "factory_stage_duration_seconds_count", team="qa-engineering") == 1  # the oldest was forgotten
    assert value(m, "factory_stage_duration_seconds_sum", team="qa-engineering") == 2


def test_model_calls_count_tokens_cost_outcome_latency_and_fallbacks_by_team_and_alias() -> None:
    m = Metrics(teams=TEAMS)
    m.model_call(call())
    m.model_call(call(tokens_in=50, tokens_out=5, cost_usd=0.5, fallbacks=["openai/gpt-4o", "anthropic/claude"]))
    m.model_call(call(ok=False, tokens_in=0, tokens_out=0, cost_usd=0.0, model="", error="all failed",
                      fallbacks=["openai/gpt-4o"]))  # fmt: skip
    m.model_call(call(team=None, alias="factory/cheap", tokens_in=7, tokens_out=3, cost_usd=0.0))
    coder = {"team": "qa-engineering", "alias": "factory/coder"}
    assert value(m, "factory_model_tokens_total", **coder, direction="in") == 150
    assert value(m, "factory_model_tokens_total", **coder, direction="out") == 25
    assert value(m, "factory_model_cost_usd_total", **coder) == 0.75
    assert value(m, "factory_model_calls_total", **coder, outcome="ok") == 2
    assert value(m, "factory_model_calls_total", **coder, outcome="error") == 1
    assert value(m, "factory_model_fallbacks_total", alias="factory/coder") == 3
    assert value(m, "factory_model_tokens_total", team="none", alias="factory/cheap", direction="in") == 7
    assert value(m, "factory_model_latency_seconds_count", alias="factory/coder") == 3
    assert value(m, "factory_model_latency_seconds_sum", alias="factory/coder") == 4.5


async def test_broker_escalation_decision_and_sla_breach_events_are_counted() -> None:
    m = Metrics(teams=TEAMS)
    where: dict[str, Any] = {"stage": 1, "team": "qa-engineering", "request_id": "run-1:1:1:q1"}
    await m.emit(ev("clarification.requested", **where, target="business-analysis", question="which?"))
    await m.emit(ev("clarification.requested", **where, target="business-analysis", question="which?"))
    await m.emit(ev("clarification.answered", **where, target="business-analysis"))
    await m.emit(ev("clarification.refused", **where, reason="timeout", detail="no reply in 120 s"))
    await m.emit(ev("escalation.decided", id="e1", decision="approved", priority="low"))
    await m.emit(ev("escalation.deferred", id="e2", decision="deferred", priority="low"))
    for level, step in ((1, "due_soon"), (2, "breached"), (3, "final")):  # the ladder's three steps, one breach
        await m.emit(ev("escalation.sla", id="e3", priority="critical", level=level, step=step))
    assert value(m, "factory_clarifications_requested_total") == 2
    assert value(m, "factory_clarifications_answered_total") == 1
    assert value(m, "factory_clarifications_refused_total", reason="timeout") == 1
    assert value(m, "factory_escalation_decisions_total", decision="approved") == 1
    assert value(m, "factory_escalation_decisions_total", decision="deferred") == 1
    assert series(m, "factory_sla_breaches_total") == {frozenset({("priority", "critical")}): 1}


async def test_labels_stay_bounded_whatever_the_events_and_calls_say() -> None:
    m = Metrics(teams=TEAMS)
    for i in range(200):
        m.model_call(call(team=f"team-{i}", alias=f"custom/alias-{i}"))
        await m.emit(ev("clarification.refused", reason=f"reason-{i}"))
        await m.emit(ev("escalation.opened", stage=0, kind=f"kind-{i}", priority="high", team=f"t{i}"))
    await m.emit(ev("escalation.opened", stage=0, kind="blocked", priority="<script>x</script>", team="qa-engineering"))
    teams = {dict(labels)["team"] for labels in series(m, "factory_model_calls_total")}
    assert teams == {"other"}  # the factory's teams are the only team labels
    aliases = {dict(labels)["alias"] for labels in series(m, "factory_model_calls_total")}
    assert len(aliases) == 33 and "other" in aliases  # 32 aliases, then other
    assert len(series(m, "factory_clarifications_refused_total")) == 17
    kinds = {dict(labels)["kind"] for labels in series(m, "factory_escalations_opened_total")}
    assert len(kinds) == 18 and {"other", "blocked"} <= kinds  # 16 unknown kinds, other, and the known kind
    assert value(m, "factory_escalations_opened_total", kind="blocked", priority="other") == 1
    assert sum(series(m, "factory_model_calls_total").values()) == 200  # every call counted, under other


@pytest.mark.parametrize(
    "event",
    [
        ev("stage.started", stage="zero", team="qa-engineering"),
        ev("stage.started", team="qa-engineering"),
        ev("stage.completed", stage=True, team=["qa"]),
        ev("escalation.opened", kind=None, priority={"a": 1}, team=42),
        ev("escalation.sla", level="2", priority=None),
        ev("clarification.refused", reason=b"bytes"),
        ev("run.failed", stage=[1], team=None),
        ev("unknown.event", anything=object()),
    ],
)
async def test_garbage_events_never_raise_and_break_nothing(event: Event) -> None:
    m = Metrics(teams=TEAMS)
    await m.emit(event)
    await m.emit(ev("run.completed"))
    assert value(m, "factory_runs_finished_total", status="complete") == 1


async def test_naive_times_and_non_events_are_skipped() -> None:
    m = Metrics(teams=TEAMS)
    await m.emit(ev("stage.started", stage=0, team="qa-engineering"))
    await m.emit(ev("stage.completed", at=datetime(2026, 12, 1, 9, 0, 5), stage=0, team="qa-engineering"))
    await m.emit(object())  # type: ignore[arg-type]
    m.model_call(object())  # type: ignore[arg-type]
    m.model_call(call(tokens_in=-5, cost_usd=-1.0))  # a negative amount would make a counter refuse it
    assert series(m, "factory_stage_duration_seconds_count") == {}
    assert value(m, "factory_model_tokens_total", team="qa-engineering", alias="factory/coder", direction="in") == 0


def test_the_snapshot_sets_the_shared_gauges_and_an_unread_part_is_emptied() -> None:
    m = Metrics(teams=TEAMS)
    assert math.isnan(value(m, "factory_workers_alive") or 0.0)  # unknown before any snapshot
    m.apply(
        Snapshot(
            runs_by_status={"running": 2, "complete": 5},
            open_escalations_by_priority={"critical": 1, "high": 0},
            escalations_past_sla={"critical": 1, "high": 0},
            workers_alive=2,
            broker_backlog={"qa-engineering": 4, "business-analysis": 0},
        )
    )
    assert value(m, "factory_runs", status="complete") == 5
    assert value(m, "factory_escalations_open", priority="critical") == 1
    assert value(m, "factory_escalations_past_sla", priority="critical") == 1
    assert value(m, "factory_workers_alive") == 2
    assert value(m, "factory_broker_backlog", team="qa-engineering") == 4
    m.apply(Snapshot(runs_by_status={"complete": 6}, workers_alive=None, broker_backlog={"qa-engineering": 1}))
    assert series(m, "factory_runs") == {frozenset({("status", "complete")}): 6}  # 'running' left with the snapshot
    assert series(m, "factory_escalations_open") == {}  # not read: empty, not stale
    assert math.isnan(value(m, "factory_workers_alive") or 0.0)
    assert series(m, "factory_broker_backlog") == {frozenset({("team", "qa-engineering")}): 1}
    m.apply(Snapshot(broker_backlog={"not-a-team": 2, "another": 3}))
    assert series(m, "factory_broker_backlog") == {frozenset({("team", "other")}): 5}


def test_worker_active_runs_and_process_info_are_exposed() -> None:
    m = Metrics(teams=TEAMS)
    m.set_worker_active_runs(3)
    assert value(m, "factory_worker_active_runs") == 3
    m.set_worker_active_runs(-1)
    assert value(m, "factory_worker_active_runs") == 0
    found = samples(m)
    assert any(name == "factory_info" for name, _ in found)
    assert any(name == "process_cpu_seconds_total" for name, _ in found)


def test_two_instances_keep_separate_registries() -> None:
    a, b = Metrics(teams=TEAMS), Metrics(teams=TEAMS)
    a.model_call(call())
    assert value(a, "factory_model_calls_total", team="qa-engineering", alias="factory/coder", outcome="ok") == 1
    assert value(b, "factory_model_calls_total", team="qa-engineering", alias="factory/coder", outcome="ok") is None


def test_serve_metrics_answers_over_http_until_closed() -> None:
    m = Metrics(teams=TEAMS)
    m.set_worker_active_runs(2)
    server = serve_metrics(m, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = response.read().decode()
        parsed = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples if not s.labels}
        assert parsed["factory_worker_active_runs"] == 2
        with pytest.raises(ConfigError, match="FACTORY_METRICS_PORT"):  # the port is taken: said so, with what to do
            serve_metrics(m, "127.0.0.1", server.port)
    finally:
        server.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass
