"""Traces of runs for Langfuse, over OpenTelemetry: built from the live events and the model calls,
so the pipeline carries no tracing code of its own.

One trace per run, its id derived from the run id as Langfuse's ``create_trace_id(seed=run_id)``
derives it, under one root span ``run`` whose span id is derived from the run id too. So a run
resumed by another process (a worker, ``factory hitl approve``) adds its spans to the same trace,
under the same root, without asking anyone where it was::

    run                                  span: trace name, run id, pipeline; ends when the run stops here
    ├── business-analysis                span per stage (its team): stage.started → stage.completed
    │   ├── objective                    generation per model call: alias, model, tokens, cost, latency
    │   ├── clarification                span: the question to another team, until answered or refused
    │   │   └── clarification            generation: the target team answering
    │   └── escalation                   event (span id from the escalation id)
    │       └── escalation.decided       event, from whichever process decided it
    └── solution-architecture ...        a later stage, maybe from another process

    group chat                           span: made when the session ends, from its start; id from the session id
    ├── solution-architecture            event per transcript line (the topic, an operator's, a team's turn)
    └── groupchat                        generation per model call (groupchat, groupchat_select, _summary)

The run id is the trace's metadata and its root span's, not repeated on every span under it (each
attribute is work on the run's path and in the export). A call outside any run (team chat, Q&A) is
a trace of its own: one generation. Prompts and answers are not sent (the artifacts and the audit
hold what teams wrote); a generation says what a call cost.

Spans are cheap on the run's path: each is built in memory and handed to the exporter's queue, which
a background thread sends in batches (``observability.otlp``). What is kept per run is bounded;
every handler logs its own trouble and never raises into the run.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, Status, StatusCode, Tracer

from observability import otlp
from observability.base import Event, ModelCall
from observability.otlp import (
    PinnedIds,
    escalation_span_id_of,
    in_thread,
    ns,
    observation,
    root_span_id_of,
    text,
    trace_id_of,
    under,
)

log = logging.getLogger(__name__)

RUN_TRACE = "factory run"  # the name of every run's trace
GROUP_CHAT_TRACE = "factory group chat"  # the name of every group chat's trace


def _bounded_put(spans: OrderedDict[str, Any], key: str, value: Any, limit: int, end: Callable[[Any], None]) -> None:
    spans[key] = value
    spans.move_to_end(key)
    while len(spans) > limit:
        _, dropped = spans.popitem(last=False)
        end(dropped)


@dataclass
class _Run:
    """What this process holds of one run: its open spans, and each team's latest stage span."""

    root: Span | None = None
    stages: OrderedDict[str, Span] = field(default_factory=OrderedDict)  # open, by team
    latest: OrderedDict[str, SpanContext] = field(default_factory=OrderedDict)  # by team, open or ended
    asks: OrderedDict[str, tuple[str, Span]] = field(default_factory=OrderedDict)  # open, by request id


class RunTracer:
    """An ``Instrument``: live events and model calls as spans of their run's trace.

    ``tracer`` must come from a provider built with ``ids`` (its id generator). ``shutdown`` sends what
    is queued and stops the exporter; ``aclose`` runs it in a thread, waiting at most ``close_timeout_s``.
    At most ``max_runs`` runs and ``max_spans`` spans of each kind per run are held open: the oldest is
    ended (and so sent) to make room."""

    def __init__(
        self,
        tracer: Tracer,
        ids: PinnedIds,
        *,
        shutdown: Callable[[], None] | None = None,
        close_timeout_s: float = 10.0,
        max_runs: int = 256,
        max_spans: int = 32,
    ) -> None:
        self._tracer = tracer
        self._ids = ids
        self._shutdown = shutdown
        self._close_timeout_s = close_timeout_s
        self._max_runs = max_runs
        self._max_spans = max_spans
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._closed = False

    # -- Instrument ---------------------------------------------------------------------------------

    async def emit(self, event: Event) -> None:
        if self._closed:
            return
        handler = self._HANDLERS.get(event.type)
        if handler is None:
            return
        try:
            handler(self, event)
        except Exception as exc:  # a span not made never costs the run anything
            log.warning("tracing: %s of run %s not traced: %s", event.type, event.run_id, exc)

    def model_call(self, call: ModelCall) -> None:
        if self._closed:
            return
        try:
            self._generation(call)
        except Exception as exc:
            log.warning("tracing: a model call of %s not traced: %s", call.alias, exc)

    async def aclose(self) -> None:
        """End every span still open (the run goes on elsewhere, or the process stops), then send
        what is queued: in a thread, waited on at most ``close_timeout_s``."""
        if self._closed:
            return
        self._closed = True
        try:
            while self._runs:
                _, held = self._runs.popitem(last=False)
                self._end_all(held, ns(datetime.now(UTC)), "WARNING", "the process stopped tracing the run here")
        except Exception as exc:
            log.warning("tracing: open spans not ended: %s", exc)
        if self._shutdown is not None:
            await in_thread(self._shutdown, self._close_timeout_s)

    # -- the run and its stages ---------------------------------------------------------------------

    def _run(self, run_id: str) -> _Run:
        held = self._runs.get(run_id)
        if held is None:
            held = self._runs[run_id] = _Run()
            while len(self._runs) > self._max_runs:
                old_id, old = self._runs.popitem(last=False)
                log.warning("tracing: more than %d runs open; run %s's spans are ended", self._max_runs, old_id)
                self._end_all(old, ns(datetime.now(UTC)), "WARNING", "too many runs traced at once")
        self._runs.move_to_end(run_id)
        return held

    def _root(self, run_id: str) -> Context:
        return under(trace_id_of(run_id), root_span_id_of(run_id))

    def _start(self, name: str, parent: Context, at: int, attributes: dict[str, Any]) -> Span:
        return self._tracer.start_span(name, context=parent, start_time=at, attributes=attributes)

    def _event(self, name: str, parent: Context, at: int, attributes: dict[str, Any], span_id: int = 0) -> None:
        """A point in time (Langfuse's ``event`` observation); its span id chosen when ``span_id``."""
        attributes = {**attributes, otlp.TYPE: "event"}
        if span_id:
            context = trace.get_current_span(parent).get_span_context()
            with self._ids.pinned(context.trace_id, span_id):
                span = self._start(name, parent, at, attributes)
        else:
            span = self._start(name, parent, at, attributes)
        span.end(end_time=at)

    def _run_started(self, event: Event) -> None:
        held = self._run(event.run_id)
        if held.root is not None:
            return
        attributes = {
            otlp.TRACE_NAME: RUN_TRACE,
            otlp.APP_ROOT: True,
            **otlp.metadata(otlp.TRACE_METADATA, {"run_id": event.run_id, "pipeline": event.data.get("pipeline")}),
            **observation("span", {"run_id": event.run_id, "pipeline": event.data.get("pipeline")}),
        }
        with self._ids.pinned(trace_id_of(event.run_id), root_span_id_of(event.run_id)):
            held.root = self._start("run", Context(), ns(event.at), attributes)  # no parent: a trace's root

    def _stage_started(self, event: Event) -> None:
        held = self._run(event.run_id)
        team = str(event.data.get("team", ""))
        stale = held.stages.pop(team, None)
        at = ns(event.at)
        if stale is not None:
            _end(stale, at, "WARNING", "the stage started again before it was recorded as ended")
        attributes = observation("span", {"stage": event.data.get("stage"), "team": team})
        span = self._start(team or "stage", self._root(event.run_id), at, attributes)
        _bounded_put(held.stages, team, span, self._max_spans, lambda s: _end(s, at, "WARNING", "too many stages"))
        _bounded_put(held.latest, team, span.get_span_context(), self._max_spans, lambda _: None)

    def _stage_completed(self, event: Event) -> None:
        held = self._run(event.run_id)
        team = str(event.data.get("team", ""))
        done = {k: v for k in ("tokens_in", "tokens_out", "confidence", "replaced") if (v := event.data.get(k)) != {}}
        span = held.stages.pop(team, None)
        if span is None:  # accepted by a decision in this process, without running again
            attrs = observation("span", {"stage": event.data.get("stage"), "team": team, **done})
            self._event(team or "stage", self._root(event.run_id), ns(event.at), attrs)
            return
        span.set_attributes(otlp.metadata(otlp.METADATA, done))
        _end(span, ns(event.at))

    def _stopped(self, event: Event) -> None:
        """The run waits for a human, failed, was cancelled or completed: its spans here end."""
        level, status = {
            "run.waiting_human": ("WARNING", "waiting for a human"),
            "run.failed": ("ERROR", f"failed: {event.data.get('error')}"),
            "run.cancelled": ("WARNING", f"cancelled: {event.data.get('reason')}"),
            "run.completed": (None, None),
        }[event.type]
        held = self._runs.pop(event.run_id, None)
        at = ns(event.at)
        if held is None or held.root is None:  # the run started elsewhere: its outcome still shows
            parent = self._root(event.run_id)
            attributes = observation("event", {}, level=level, status=status)
            self._event(event.type, parent, at, attributes)
        if held is not None:
            if held.root is not None:
                held.root.set_attributes(otlp.metadata(otlp.METADATA, {"outcome": event.type.removeprefix("run.")}))
            self._end_all(held, at, level, status)

    def _end_all(self, held: _Run, at: int, level: str | None, status: str | None) -> None:
        for _, span in held.asks.values():
            _end(span, at, "WARNING", "the run stopped before the clarification came back")
        for span in held.stages.values():
            _end(span, at, level, status)
        if held.root is not None:
            _end(held.root, at, level, status)
        held.asks.clear()
        held.stages.clear()
        held.root = None

    # -- clarifications, escalations, decisions ---------------------------------------------------

    def _parent(self, run_id: str, team: str | None) -> Context:
        """Where a span of ``team`` in the run nests: its open stage, else its latest one, else the root."""
        held = self._runs.get(run_id)
        if held is not None and team is not None:
            if team in held.stages:
                return trace.set_span_in_context(held.stages[team])
            if team in held.latest:
                return trace.set_span_in_context(NonRecordingSpan(held.latest[team]))
        return self._root(run_id)

    def _asked(self, event: Event) -> None:
        held = self._run(event.run_id)
        data = event.data
        at = ns(event.at)
        attributes = {
            **observation("span", {k: data.get(k) for k in ("request_id", "team", "target")}),
            otlp.INPUT: text(data.get("question", "")),
        }
        span = self._start("clarification", self._parent(event.run_id, data.get("team")), at, attributes)
        ask = (str(data.get("target", "")), span)
        _bounded_put(held.asks, str(data.get("request_id")), ask, self._max_spans,
                     lambda a: _end(a[1], at, "WARNING", "too many clarifications open"))  # fmt: skip

    def _answered(self, event: Event) -> None:
        held = self._runs.get(event.run_id)
        ask = held.asks.pop(str(event.data.get("request_id")), None) if held is not None else None
        if ask is None:
            return
        if event.type == "clarification.answered":
            _end(ask[1], ns(event.at))
        else:
            reason = event.data.get("reason")
            detail = event.data.get("detail")
            _end(ask[1], ns(event.at), "WARNING", f"{reason}: {detail}" if detail else str(reason))

    def _escalated(self, event: Event) -> None:
        data = event.data
        metadata = {k: data.get(k) for k in ("id", "stage", "team", "kind", "priority")}
        attributes = {
            **observation("event", metadata, level="WARNING"),
            otlp.INPUT: text(data.get("question", "")),
        }
        parent = self._parent(event.run_id, data.get("team"))
        self._event("escalation", parent, ns(event.at), attributes, escalation_span_id_of(str(data.get("id"))))

    def _decided(self, event: Event) -> None:
        """A decision, or a step of the SLA ladder, under its escalation's event."""
        data = event.data
        keys = ("id", "decision", "decided_by", "priority", "level", "step", "sla_deadline")
        level = "WARNING" if event.type == "escalation.sla" else None
        attributes = observation("event", {k: data.get(k) for k in keys}, level=level)
        if data.get("text"):
            attributes[otlp.OUTPUT] = text(data["text"])
        parent = under(trace_id_of(event.run_id), escalation_span_id_of(str(data.get("id"))))
        self._event(event.type, parent, ns(event.at), attributes)

    def _memory_trouble(self, event: Event) -> None:
        team = event.data.get("team")
        attributes = observation("event", {"team": team}, level="WARNING", status=event.data.get("error"))
        self._event(event.type, self._parent(event.run_id, team), ns(event.at), attributes)

    # -- group chats --------------------------------------------------------------------------------

    def _chat_line(self, event: Event) -> None:
        """A line of a group chat's transcript (the topic, an operator's, a team's turn): an event under
        the session's root, named by who spoke. The turn's model calls are generations beside it."""
        data = event.data
        kind, source = data.get("kind"), data.get("source")
        chosen = data.get("meta")
        chosen = chosen if isinstance(chosen, dict) else {}
        values = {"seq": data.get("seq"), "kind": kind, "source": source, "tokens": data.get("tokens"),
                  "selected_by": chosen.get("selected_by")}  # fmt: skip
        name = str(source) if kind == "team" else str(kind or "line")
        self._event(name, self._root(event.run_id), ns(event.at), observation("event", values))

    def _chat_ended(self, event: Event) -> None:
        """The session's root span, made when it ends (its discussion may have had several drivers):
        from ``started_at`` to now, with the session's id as a run's would have it, so every
        generation and line already sent nests under it."""
        data = event.data
        at = ns(event.at)
        started = data.get("started_at")
        start = min(ns(datetime.fromisoformat(started)), at) if isinstance(started, str) else at
        failed = event.type == "groupchat.failed"
        level, status = ("ERROR", f"failed: {data.get('error')}") if failed else (None, None)
        values = {"session_id": event.run_id, "teams": data.get("teams")}
        attributes = {
            otlp.TRACE_NAME: GROUP_CHAT_TRACE,
            otlp.APP_ROOT: True,
            **otlp.metadata(otlp.TRACE_METADATA, values),
            **observation("span", {**values, "outcome": "failed" if failed else data.get("reason")}),
        }
        with self._ids.pinned(trace_id_of(event.run_id), root_span_id_of(event.run_id)):
            span = self._start("group chat", Context(), start, attributes)
        _end(span, at, level, status)

    _HANDLERS: dict[str, Callable[[RunTracer, Event], None]] = {
        "run.started": _run_started,
        "stage.started": _stage_started,
        "stage.completed": _stage_completed,
        "run.waiting_human": _stopped,
        "run.failed": _stopped,
        "run.cancelled": _stopped,
        "run.completed": _stopped,
        "clarification.requested": _asked,
        "clarification.answered": _answered,
        "clarification.refused": _answered,
        "escalation.opened": _escalated,
        "escalation.decided": _decided,
        "escalation.deferred": _decided,
        "escalation.sla": _decided,
        "memory.unavailable": _memory_trouble,
        "memory.retain_failed": _memory_trouble,
        "groupchat.message": _chat_line,
        "groupchat.ended": _chat_ended,
        "groupchat.failed": _chat_ended,
    }

    # -- model calls --------------------------------------------------------------------------------

    def _generation(self, call: ModelCall) -> None:
        end = ns(call.ended_at)
        start = max(0, end - int(call.latency_ms * 1_000_000))
        level, status = None, None
        if not call.ok:
            level, status = "ERROR", call.error or "the call failed"
        elif call.fallbacks:
            level, status = "WARNING", f"answered after {len(call.fallbacks)} deployment(s) failed"
        metadata = {
            "alias": call.alias,
            "purpose": call.purpose,
            "team": call.team,
            "latency_ms": round(call.latency_ms, 3),
            "fallbacks": call.fallbacks or None,
        }
        attributes = {
            **observation("generation", metadata, level=level, status=status),
            otlp.USAGE: json.dumps({"input": call.tokens_in, "output": call.tokens_out}),
            otlp.COST: json.dumps({"total": call.cost_usd}),
        }
        if call.model:
            attributes[otlp.MODEL] = call.model
        if call.run_id is None:  # outside any run: a trace of its own
            attributes[otlp.TRACE_NAME] = call.purpose
            attributes[otlp.APP_ROOT] = True
            parent = Context()
        else:
            parent = self._answering(call.run_id, call.team) or self._parent(call.run_id, call.team)
        span = self._start(call.purpose, parent, start, attributes)
        if not call.ok:
            span.set_status(Status(StatusCode.ERROR, text(call.error or "")))
        span.end(end_time=end)

    def _answering(self, run_id: str, team: str | None) -> Context | None:
        """The open clarification ``team`` is the target of: its answer's calls nest there."""
        held = self._runs.get(run_id)
        if held is None or team is None:
            return None
        for target, span in reversed(held.asks.values()):
            if target == team:
                return trace.set_span_in_context(span)
        return None


def _end(span: Span, at: int, level: str | None = None, status: str | None = None) -> None:
    if level is not None:
        span.set_attribute(otlp.LEVEL, level)
    if status is not None:
        span.set_attribute(otlp.STATUS, text(status))
    if level == "ERROR":
        span.set_status(Status(StatusCode.ERROR, text(status or "")))
    span.end(end_time=at)


def langfuse_tracer(*, public_key: str, secret_key: str, base_url: str | None, timeout_s: int = 5) -> RunTracer:
    """A ``RunTracer`` sending to Langfuse at ``base_url`` (its cloud when None) with the project's keys."""
    export = otlp.langfuse_export(public_key=public_key, secret_key=secret_key, base_url=base_url, timeout_s=timeout_s)
    return RunTracer(export.tracer, export.ids, shutdown=export.shutdown, close_timeout_s=timeout_s + 1)
