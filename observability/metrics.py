"""Prometheus metrics of one process: an ``Instrument`` fed by the live events and the model calls,
plus gauges of the factory's shared state (runs, escalations, workers, the broker's backlog) set
from a ``Snapshot`` that the process reads from PostgreSQL and Redis when it is scraped.

Each ``Metrics`` has its own ``CollectorRegistry``: several factories in one process (tests, the
chat and a CLI call) never collide, and nothing lands in prometheus_client's global registry.

Labels stay bounded: team slugs, aliases, statuses, priorities, kinds and reasons, each label
admitting at most a fixed number of distinct well-formed values (anything beyond, or malformed, is
counted as ``other``); never a run id or free text. Events carry no guarantee about their data, so
whatever an event holds is read defensively: a malformed event is skipped and logged, never raised.

Counters (``_total``) count what this process saw happen; gauges from the snapshot are the same in
every process that reads it, so dashboards and alert rules take their ``max`` across instances.
Fallbacks are counted from the model calls (every call, inside a run or not), not from the
``model.fallback`` events, which repeat the run calls' hops.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from factory.errors import ConfigError
from observability.base import Event, ModelCall

log = logging.getLogger(__name__)

OTHER = "other"  # a label value outside the bounds
NONE = "none"  # a model call made outside any team (project Q&A, extraction)
#: How runs end a drive, by event type (``run.waiting_human`` can happen several times in one run).
RUN_ENDINGS = {
    "run.completed": "complete",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
    "run.waiting_human": "waiting_human",
}
#: The values of the contracts (DESIGN §4): always their own label, however many others came first.
KNOWN = {
    "status": ("running", "waiting_human", "complete", "failed", "cancelled"),
    "priority": ("critical", "high", "medium", "low"),
    "kind": ("clarification", "approval", "blocked", "budget"),
    "decision": ("answered", "approved", "rejected", "deferred", "expired"),
}
#: Stages started and not ended yet that are remembered for their duration (the oldest are forgotten).
MAX_PENDING_STAGES = 4096
STAGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BREACHED = 2  # the SLA ladder's level at the breach (hitl.base.SlaLevel.BREACHED)
_WELL_FORMED = re.compile(r"^[a-z0-9][a-z0-9_./:-]{0,79}$")


class _Bounded:
    """One label's values: ``known`` ones always; other well-formed ones as they come, up to ``limit``
    distinct, unless ``closed``; anything else is ``other``."""

    def __init__(self, limit: int, known: Collection[str] = (), *, closed: bool = False) -> None:
        self._known = frozenset(known)
        self._limit = limit
        self._closed = closed
        self._seen: set[str] = set()

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or not _WELL_FORMED.match(value):
            return OTHER
        if value in self._known or value in self._seen:
            return value
        if self._closed or len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


@dataclass(frozen=True)
class Snapshot:
    """The shared state as one process read it. None: that part could not be read (its gauges are
    then left empty rather than stale)."""

    runs_by_status: Mapping[str, int] | None = None
    open_escalations_by_priority: Mapping[str, int] | None = None
    escalations_past_sla: Mapping[str, int] | None = None  # open ones past their deadline, by priority
    workers_alive: int | None = None
    broker_backlog: Mapping[str, int] | None = None  # clarification requests not answered yet, by team


class Metrics:
    """The ``Instrument`` that keeps this process's Prometheus metrics. ``teams``: the only team
    labels admitted (others are ``other``); empty: any well-formed slug, up to 64."""

    def __init__(self, *, teams: Collection[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._team = _Bounded(64, teams, closed=bool(teams))
        self._alias = _Bounded(32)
        self._small = {name: _Bounded(16, KNOWN.get(name, ())) for name in (*KNOWN, "reason")}
        self._started: OrderedDict[tuple[str, int], datetime] = OrderedDict()
        self._shown: dict[Gauge, set[str]] = {}  # the labels each snapshot gauge shows now
        self._define()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.info.info({"version": _version()})
        for status in RUN_ENDINGS.values():  # present at 0, so the first increase is seen by rate()
            self.runs_finished.labels(status=status)
        self.clarifications_requested.inc(0)
        self.clarifications_answered.inc(0)
        self.workers_alive.set(math.nan)  # unknown until a snapshot says (a worker that never reads one)

    def _define(self) -> None:
        r = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        self.info = Info("factory", "This process: the factory's version.", registry=r)
        self.runs_finished = counter("factory_runs_finished", "Drives of a run that ended, by status.", "status")
        self.runs = gauge("factory_runs", "Runs stored, by status (snapshot).", "status")
        self.stage_duration = Histogram(
            "factory_stage_duration_seconds", "Stage start to completion.", ["team"], buckets=STAGE_BUCKETS, registry=r
        )
        self.stages_ended = counter("factory_stages_ended", "Stages complete, escalated, failed.", "team", "outcome")
        self.model_calls = counter("factory_model_calls", "Model calls (ok, error).", "team", "alias", "outcome")
        self.model_tokens = counter("factory_model_tokens", "Model tokens (in, out).", "team", "alias", "direction")
        self.model_cost = counter("factory_model_cost_usd", "Cost of model calls in USD.", "team", "alias")
        self.model_latency = Histogram(
            "factory_model_latency_seconds", "Model call latency.", ["alias"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.fallbacks = counter("factory_model_fallbacks", "Deployments that failed in a model call.", "alias")
        self.clarifications_requested = counter("factory_clarifications_requested", "Clarifications requested.")
        self.clarifications_answered = counter("factory_clarifications_answered", "Clarifications answered.")
        self.clarifications_refused = counter("factory_clarifications_refused", "Clarifications refused.", "reason")
        self.broker_backlog = gauge("factory_broker_backlog", "Clarifications unanswered (snapshot).", "team")
        self.escalations_opened = counter("factory_escalations_opened", "Escalations opened.", "kind", "priority")
        self.escalation_decisions = counter("factory_escalation_decisions", "Escalation decisions.", "decision")
        self.sla_breaches = counter("factory_sla_breaches", "Escalations that breached their SLA.", "priority")
        self.escalations_open = gauge("factory_escalations_open", "Escalations waiting (snapshot).", "priority")
        self.escalations_past_sla = gauge("factory_escalations_past_sla", "Waiting past SLA (snapshot).", "priority")
        self.workers_alive = gauge("factory_workers_alive", "Workers with a live heartbeat (snapshot).")
        self.worker_active_runs = gauge("factory_worker_active_runs", "Runs this worker process drives now.")

    # -- the Instrument ------------------------------------------------------------------------

    async def emit(self, event: Event) -> None:
        try:
            self._event(event)
        except Exception as exc:  # an instrument never fails the run
            log.warning("metrics skipped an event %r: %s", getattr(event, "type", None), exc)

    def model_call(self, call: ModelCall) -> None:
        try:
            team = NONE if call.team is None else self._team(call.team)
            alias = self._alias(call.alias)
            self.model_calls.labels(team, alias, "ok" if call.ok else "error").inc()
            self.model_tokens.labels(team, alias, "in").inc(max(0, call.tokens_in))
            self.model_tokens.labels(team, alias, "out").inc(max(0, call.tokens_out))
            self.model_cost.labels(team, alias).inc(max(0.0, call.cost_usd))
            self.model_latency.labels(alias).observe(max(0.0, call.latency_ms) / 1000)
            if call.fallbacks:
                self.fallbacks.labels(alias).inc(len(call.fallbacks))
        except Exception as exc:
            log.warning("metrics skipped a model call of %r: %s", getattr(call, "alias", None), exc)

    def _event(self, event: Event) -> None:
        kind, data = event.type, event.data if isinstance(event.data, dict) else {}
        if kind == "stage.started":
            self._stage_started(event.run_id, data, event.at)
        elif kind == "stage.completed":
            self._stage_completed(event.run_id, data, event.at)
        elif kind in RUN_ENDINGS:
            self.runs_finished.labels(self._small["status"](RUN_ENDINGS[kind])).inc()
            if kind == "run.failed" and "stage" in data:
                self._stage_ended(event.run_id, data, "failed")
            elif "stage" in data:
                self._forget(event.run_id, data)
        elif kind == "escalation.opened":
            priority = self._small["priority"](data.get("priority"))
            self.escalations_opened.labels(self._small["kind"](data.get("kind")), priority).inc()
            self._stage_ended(event.run_id, data, "escalated")
        elif kind in ("escalation.decided", "escalation.deferred"):
            self.escalation_decisions.labels(self._small["decision"](data.get("decision"))).inc()
        elif kind == "escalation.sla" and data.get("level") == _BREACHED:
            self.sla_breaches.labels(self._small["priority"](data.get("priority"))).inc()
        elif kind == "clarification.requested":
            self.clarifications_requested.inc()
        elif kind == "clarification.answered":
            self.clarifications_answered.inc()
        elif kind == "clarification.refused":
            self.clarifications_refused.labels(self._small["reason"](data.get("reason"))).inc()

    def _stage_started(self, run_id: str, data: dict[str, Any], at: datetime) -> None:
        key = _stage_key(run_id, data)
        self._started.pop(key, None)
        self._started[key] = at
        while len(self._started) > MAX_PENDING_STAGES:
            self._started.popitem(last=False)

    def _stage_completed(self, run_id: str, data: dict[str, Any], at: datetime) -> None:
        started = self._started.pop(_stage_key(run_id, data), None)
        team = self._team(data.get("team"))
        self.stages_ended.labels(team, "complete").inc()
        if started is not None:
            seconds = (at - started).total_seconds()
            if seconds >= 0:
                self.stage_duration.labels(team).observe(seconds)

    def _stage_ended(self, run_id: str, data: dict[str, Any], outcome: str) -> None:
        self._forget(run_id, data)
        self.stages_ended.labels(self._team(data.get("team")), outcome).inc()

    def _forget(self, run_id: str, data: dict[str, Any]) -> None:
        self._started.pop(_stage_key(run_id, data), None)

    # -- the shared state, and what a worker says of itself -------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Set the gauges of the shared state from ``snapshot``; a part it could not read is emptied."""
        self._replace(self.runs, snapshot.runs_by_status, self._small["status"])
        self._replace(self.escalations_open, snapshot.open_escalations_by_priority, self._small["priority"])
        self._replace(self.escalations_past_sla, snapshot.escalations_past_sla, self._small["priority"])
        self._replace(self.broker_backlog, snapshot.broker_backlog, self._team)
        self.workers_alive.set(math.nan if snapshot.workers_alive is None else snapshot.workers_alive)

    def _replace(self, gauge: Gauge, values: Mapping[str, int] | None, label: _Bounded) -> None:
        """Each label's new value in place, then the labels no longer there removed: a scrape meanwhile
        sees old or new values, never an empty family."""
        summed: dict[str, float] = {}
        for key, value in (values or {}).items():
            name = label(key)
            summed[name] = summed.get(name, 0) + float(value)  # two keys bounded to ``other`` add up
        for name, total in summed.items():
            gauge.labels(name).set(total)
        for gone in self._shown.get(gauge, set()) - summed.keys():
            gauge.remove(gone)
        self._shown[gauge] = set(summed)

    def set_worker_active_runs(self, count: int) -> None:
        """What the worker drives now (``factory worker`` sets it as runs start and end)."""
        self.worker_active_runs.set(max(0, count))

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _stage_key(run_id: str, data: dict[str, Any]) -> tuple[str, int]:
    stage = data.get("stage")
    if not isinstance(stage, int) or isinstance(stage, bool):
        raise ValueError(f"stage is {stage!r}, not an index")
    return str(run_id), stage


def _version() -> str:
    try:
        return metadata.version("ai-software-factory")
    except metadata.PackageNotFoundError:
        return "unknown"


class MetricsServer:
    """``/metrics`` of one ``Metrics`` over HTTP, served from a thread until ``close()``."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc});"
                " set FACTORY_METRICS_PORT to a free port, or 0 not to serve them"
            ) from exc
        self.host, self.port = host, int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve_metrics(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics`` (port 0: any free port, see ``.port``)."""
    return MetricsServer(metrics, host, port)
