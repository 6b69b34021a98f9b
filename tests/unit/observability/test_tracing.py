"""Run traces (observability/tracing.py) on an in-memory exporter: the tree run → stage → generation,
clarifications, escalations and decisions, a run resumed by another tracer joining the same trace,
calls outside runs, bounds, closing, and trouble that never reaches the run."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langfuse import Langfuse, LangfuseOtelSpanAttributes
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_trace_id

from factory.settings import Settings
from factory.wiring import instruments
from observability import otlp
from observability.base import Event, ModelCall
from observability.otlp import PinnedIds, escalation_span_id_of, root_span_id_of, trace_id_of
from observability.tracing import RunTracer

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
META = "langfuse.observation.metadata."


def tracer(**options: Any) -> tuple[RunTracer, InMemorySpanExporter]:
    ids = PinnedIds()
    provider = TracerProvider(id_generator=ids, shutdown_on_exit=False)
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return RunTracer(provider.get_tracer("test"), ids, shutdown=provider.shutdown, **options), exported


def event(type_: str, seconds: float = 0, run_id: str = "run-1", /, **data: Any) -> Event:
    return Event(type=type_, run_id=run_id, data=data, at=T0 + timedelta(seconds=seconds))


def call(team: str | None, run_id: str | None = "run-1", seconds: float = 1, **fields: Any) -> ModelCall:
    values: dict[str, Any] = {
        "run_id": run_id, "team": team, "alias": "factory/coder", "model": "openai/gpt-x", "purpose": "objective",
        "tokens_in": 120, "tokens_out": 30, "cost_usd": 0.0042, "latency_ms": 250.0, "ok": True,
        "ended_at": T0 + timedelta(seconds=seconds), **fields,
    }  # fmt: skip
    return ModelCall(**values)


def meta(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return json.loads(str(span.attributes[META + key]))


def attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_ids_are_langfuse_s_and_attribute_names_its_own() -> None:
    assert format_trace_id(trace_id_of("run-abc")) == Langfuse.create_trace_id(seed="run-abc")
    assert root_span_id_of("run-abc") != root_span_id_of("run-abd") != escalation_span_id_of("run-abc")
    a = LangfuseOtelSpanAttributes
    assert (otlp.TYPE, otlp.LEVEL, otlp.STATUS, otlp.INPUT, otlp.OUTPUT, otlp.METADATA) == (
        a.OBSERVATION_TYPE, a.OBSERVATION_LEVEL, a.OBSERVATION_STATUS_MESSAGE, a.OBSERVATION_INPUT,
        a.OBSERVATION_OUTPUT, a.OBSERVATION_METADATA,
    )  # fmt: skip
    assert (otlp.MODEL, otlp.USAGE, otlp.COST, otlp.TRACE_NAME, otlp.TRACE_METADATA, otlp.APP_ROOT) == (
        a.OBSERVATION_MODEL, a.OBSERVATION_USAGE_DETAILS, a.OBSERVATION_COST_DETAILS, a.TRACE_NAME, a.TRACE_METADATA,
        a.IS_APP_ROOT,
    )  # fmt: skip


async def test_a_run_is_one_trace_of_stages_generations_and_clarifications() -> None:
    t, exported = tracer()
    await t.emit(event("run.started", pipeline=["business-analysis", "solution-architecture"]))
    await t.emit(event("stage.started", 1, stage=0, team="business-analysis"))
    t.model_call(call("business-analysis", seconds=2))
    await t.emit(event("clarification.requested", 3, stage=0, team="business-analysis", request_id="q1",
                       target="api-design", question="REST or gRPC?"))  # fmt: skip
    t.model_call(call("api-design", seconds=4, purpose="clarification"))
    await t.emit(event("clarification.answered", 5, stage=0, team="business-analysis", request_id="q1"))
    await t.emit(event("stage.completed", 6, stage=0, team="business-analysis", tokens_in=240, tokens_out=0))
    t.model_call(call("business-analysis", seconds=7, purpose="memory"))  # retention, after the commit
    await t.emit(event("stage.started", 8, stage=1, team="solution-architecture"))
    await t.emit(event("escalation.opened", 9, stage=1, id="e1", team="solution-architecture", kind="approval",
                       priority="medium", question="Approve at confidence 0.3?"))  # fmt: skip
    await t.emit(event("run.waiting_human", 10, stage=1, team="solution-architecture"))

    spans = exported.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {trace_id_of("run-1")}
    [root] = named(spans, "run")
    assert root.parent is None and root.context.span_id == root_span_id_of("run-1")
    assert attr(root, "langfuse.trace.name") == "factory run"
    assert meta(root, "outcome") == "waiting_human" and attr(root, otlp.LEVEL) == "WARNING"
    [ba] = named(spans, "business-analysis")
    [sa] = named(spans, "solution-architecture")
    assert parent_of(ba) == parent_of(sa) == root.context.span_id
    assert (meta(ba, "team"), meta(ba, "stage"), meta(ba, "tokens_in"), meta(ba, "tokens_out")) == (
        "business-analysis", 0, 240, 0,
    )  # fmt: skip
    assert (ba.start_time, ba.end_time) == (otlp.ns(T0 + timedelta(seconds=1)), otlp.ns(T0 + timedelta(seconds=6)))
    assert attr(sa, otlp.STATUS) == "waiting for a human"  # ended where the run stopped
    [objective] = named(spans, "objective")
    [memory] = named(spans, "memory")
    assert parent_of(objective) == parent_of(memory) == ba.context.span_id
    generations = [s for s in spans if attr(s, otlp.TYPE) == "generation"]
    [answering] = [g for g in generations if meta(g, "team") == "api-design"]
    [asked] = [s for s in named(spans, "clarification") if attr(s, otlp.TYPE) == "span"]  # and its answer's call
    assert parent_of(asked) == ba.context.span_id and parent_of(answering) == asked.context.span_id
    assert attr(asked, otlp.INPUT) == "REST or gRPC?" and meta(asked, "target") == "api-design"
    [escalation] = named(spans, "escalation")
    assert escalation.context.span_id == escalation_span_id_of("e1") and parent_of(escalation) == sa.context.span_id
    assert attr(escalation, otlp.TYPE) == "event" and attr(escalation, otlp.INPUT) == "Approve at confidence 0.3?"


async def test_a_generation_carries_alias_model_tokens_cost_latency_and_fallbacks() -> None:
    t, exported = tracer()
    await t.emit(event("run.started"))
    await t.emit(event("stage.started", stage=0, team="qa-engineering"))
    t.model_call(call("qa-engineering", seconds=3, fallbacks=["openai/gpt-x@https://api.example"]))
    t.model_call(call("qa-engineering", seconds=4, ok=False, model="", error="rate limited", tokens_out=0))
    await t.emit(event("run.completed", 5))
    ok, failed = sorted(
        (s for s in exported.get_finished_spans() if s.name == "objective"), key=lambda s: s.end_time or 0
    )
    assert attr(ok, otlp.TYPE) == "generation" and attr(ok, otlp.MODEL) == "openai/gpt-x"
    assert json.loads(attr(ok, otlp.USAGE)) == {"input": 120, "output": 30}
    assert json.loads(attr(ok, otlp.COST)) == {"total": 0.0042}
    assert (meta(ok, "alias"), meta(ok, "purpose"), meta(ok, "latency_ms")) == ("factory/coder", "objective", 250.0)
    assert meta(ok, "fallbacks") == ["openai/gpt-x@https://api.example"] and attr(ok, otlp.LEVEL) == "WARNING"
    assert ok.end_time is not None and ok.start_time is not None
    assert ok.end_time - ok.start_time == 250_000_000  # started its latency before it ended
    assert attr(failed, otlp.LEVEL) == "ERROR" and attr(failed, otlp.STATUS) == "rate limited"
    assert attr(failed, otlp.MODEL) is None and not failed.status.is_ok


async def test_a_run_resumed_by_another_process_joins_the_same_trace_and_root() -> None:
    first, exported_first = tracer()
    await first.emit(event("run.started"))
    await first.emit(event("stage.started", 1, stage=0, team="business-analysis"))
    await first.emit(event("escalation.opened", 2, stage=0, id="e9", team="business-analysis", kind="approval",
                           priority="medium", question="ok?"))  # fmt: skip
    await first.emit(event("run.waiting_human", 3, stage=0, team="business-analysis"))
    await first.aclose()

    second, exported_second = tracer()  # another provider: nothing shared but the run id
    await second.emit(event("escalation.decided", 60, id="e9", decision="approved", decided_by="ana", text="fine"))
    await second.emit(event("stage.completed", 61, stage=0, team="business-analysis"))  # accepted, not re-run
    await second.emit(event("stage.started", 62, stage=1, team="documentation"))
    t_call = call("documentation", seconds=63)
    second.model_call(t_call)
    await second.emit(event("stage.completed", 64, stage=1, team="documentation"))
    await second.emit(event("run.completed", 65))
    await second.aclose()

    later = exported_second.get_finished_spans()
    assert {s.context.trace_id for s in later} == {trace_id_of("run-1")}
    assert not named(later, "run")  # the root was sent once, by the process that started the run
    [root] = named(exported_first.get_finished_spans(), "run")
    [docs] = named(later, "documentation")
    [accepted] = named(later, "business-analysis")
    [done] = named(later, "run.completed")
    assert parent_of(docs) == parent_of(accepted) == parent_of(done) == root.context.span_id
    [decided] = named(later, "escalation.decided")
    [opened] = named(exported_first.get_finished_spans(), "escalation")
    assert parent_of(decided) == opened.context.span_id
    assert (meta(decided, "decision"), meta(decided, "decided_by"), attr(decided, otlp.OUTPUT)) == (
        "approved", "ana", "fine",
    )  # fmt: skip
    [generation] = named(later, "objective")
    assert parent_of(generation) == docs.context.span_id


async def test_refused_clarifications_failures_and_calls_outside_runs() -> None:
    t, exported = tracer()
    await t.emit(event("run.started"))
    await t.emit(event("stage.started", 1, stage=0, team="api-design"))
    await t.emit(event("clarification.requested", 2, team="api-design", request_id="q", target="qa-engineering"))
    await t.emit(event("clarification.refused", 3, team="api-design", request_id="q", reason="timeout",
                       detail="no reply within 120 s"))  # fmt: skip
    await t.emit(event("run.failed", 4, stage=0, team="api-design", error="the model is unreachable"))
    t.model_call(call("api-design", run_id=None, purpose="team_chat"))
    spans = exported.get_finished_spans()
    [ask] = named(spans, "clarification")
    assert attr(ask, otlp.LEVEL) == "WARNING" and attr(ask, otlp.STATUS) == "timeout: no reply within 120 s"
    [stage] = named(spans, "api-design")
    [root] = named(spans, "run")
    for span in (stage, root):
        assert attr(span, otlp.LEVEL) == "ERROR" and "the model is unreachable" in attr(span, otlp.STATUS)
        assert not span.status.is_ok
    [chat] = named(spans, "team_chat")
    assert chat.parent is None and chat.context.trace_id != trace_id_of("run-1")
    assert attr(chat, "langfuse.trace.name") == "team_chat"


async def test_a_group_chat_is_one_trace_whose_root_is_made_when_it_ends() -> None:
    t, exported = tracer()
    session = "gc-20261201-090000-0a1b2c3d"
    line = {"seq": 1, "kind": "team", "source": "qa-engineering", "tokens": 150, "meta": {"selected_by": "selector"}}
    t.model_call(call("qa-engineering", run_id=session, purpose="groupchat"))  # another process may drive it
    await t.emit(event("groupchat.message", 2, session, **line))
    await t.emit(event("groupchat.message", 3, session, seq=2, kind="operator", source="ana", tokens=0))
    t.model_call(call(None, run_id=session, seconds=4, purpose="groupchat_summary"))
    await t.emit(event("groupchat.ended", 5, session, reason="consensus", teams=["qa-engineering", "sre"],
                       started_at=T0.isoformat()))  # fmt: skip
    spans = exported.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {trace_id_of(session)}
    [root] = named(spans, "group chat")
    assert root.context.span_id == root_span_id_of(session) and root.parent is None
    assert (root.start_time, root.end_time) == (otlp.ns(T0), otlp.ns(T0 + timedelta(seconds=5)))
    assert attr(root, otlp.TRACE_NAME) == "factory group chat" and attr(root, otlp.APP_ROOT) is True
    assert (meta(root, "outcome"), meta(root, "teams")) == ("consensus", ["qa-engineering", "sre"])
    children = [s for s in spans if s is not root]
    assert sorted(s.name for s in children) == ["groupchat", "groupchat_summary", "operator", "qa-engineering"]
    assert {parent_of(s) for s in children} == {root.context.span_id}
    [turn] = named(spans, "qa-engineering")
    assert (meta(turn, "seq"), meta(turn, "tokens"), meta(turn, "selected_by")) == (1, 150, "selector")
    await t.emit(event("groupchat.failed", 6, "gc-20261201-090000-ffffffff", error="model down"))
    [failed] = [s for s in exported.get_finished_spans() if s.name == "group chat" and s is not root]
    assert attr(failed, otlp.LEVEL) == "ERROR" and "model down" in attr(failed, otlp.STATUS)


async def test_open_spans_are_bounded_and_ended_when_evicted() -> None:
    t, exported = tracer(max_runs=2, max_spans=2)
    for run in ("a", "b", "c"):
        await t.emit(event("run.started", 0, run))
    [evicted] = named(exported.get_finished_spans(), "run")
    assert evicted.context.trace_id == trace_id_of("a") and attr(evicted, otlp.STATUS) == "too many runs traced at once"
    for i, team in enumerate(("t1", "t2", "t3")):  # three stages open at once in run c: the oldest ends
        await t.emit(event("stage.started", 0, "c", stage=i, team=team))
    assert [s.name for s in exported.get_finished_spans()][1:] == ["t1"]
    assert len(t._runs) == 2 and len(t._runs["c"].stages) == 2


async def test_close_ends_what_is_open_sends_and_then_ignores_everything() -> None:
    t, exported = tracer()
    await t.emit(event("run.started"))
    await t.emit(event("stage.started", stage=0, team="qa-engineering"))
    await t.aclose()
    spans = exported.get_finished_spans()
    assert sorted(s.name for s in spans) == ["qa-engineering", "run"]
    assert {attr(s, otlp.STATUS) for s in spans} == {"the process stopped tracing the run here"}
    await t.emit(event("stage.started", stage=1, team="documentation"))
    t.model_call(call("documentation"))
    assert len(exported.get_finished_spans()) == 2


async def test_close_waits_for_a_stuck_exporter_only_so_long() -> None:
    t = RunTracer(tracer()[0]._tracer, PinnedIds(), shutdown=lambda: time.sleep(5), close_timeout_s=0.2)
    started = time.perf_counter()
    await t.aclose()
    assert time.perf_counter() - started < 2


class Exploding:
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter broke")


async def test_trouble_never_reaches_the_run(caplog: pytest.LogCaptureFixture) -> None:
    broken = RunTracer(Exploding(), PinnedIds())  # type: ignore[arg-type]
    await broken.emit(event("run.started"))
    broken.model_call(call("qa-engineering"))
    assert "exporter broke" in caplog.text
    t, exported = tracer()
    for kind in ("stage.started", "stage.completed", "clarification.requested", "escalation.opened",
                 "escalation.decided", "run.failed", "memory.unavailable"):  # fmt: skip
        await t.emit(Event(type=kind, run_id="odd", data={"team": None, "stage": object()}, at=datetime(2026, 1, 1)))
    t.model_call(call(None, latency_ms=1e12))  # longer than the epoch is old: starts at 0
    await t.emit(event("something.new"))
    assert exported.get_finished_spans()


def settings(**keys: str) -> Settings:
    return Settings(**keys)  # type: ignore[arg-type]  # the LANGFUSE_* aliases


@pytest.mark.parametrize(
    "keys",
    [{}, {"LANGFUSE_PUBLIC_KEY": "pk-lf-1"}, {"LANGFUSE_SECRET_KEY": "sk-lf-1"},
     {"LANGFUSE_PUBLIC_KEY": " ", "LANGFUSE_SECRET_KEY": "sk-lf-1"}],
)  # fmt: skip
def test_no_tracer_without_both_keys(keys: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "FACTORY_LANGFUSE_PUBLIC_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert not [i for i in instruments(settings(**keys)) if isinstance(i, RunTracer)]


async def test_a_tracer_with_both_keys_and_never_the_global_provider() -> None:
    global_provider = trace.get_tracer_provider()
    found = instruments(
        settings(LANGFUSE_PUBLIC_KEY="pk-lf-1", LANGFUSE_SECRET_KEY="sk-lf-1", LANGFUSE_BASE_URL="http://127.0.0.1:9")
    )
    [tracing] = [i for i in found if isinstance(i, RunTracer)]
    assert trace.get_tracer_provider() is global_provider  # other libraries' spans never reach Langfuse
    await asyncio.wait_for(tracing.aclose(), 15)  # nothing was traced: nothing is sent
