"""Tracing with the real Langfuse SDK exporter: scripted runs through ``open_factory`` with LANGFUSE_*
pointing at a local HTTP server that receives the OTLP export as Langfuse would (POST
/api/public/otel/v1/traces, gzipped protobuf, Basic auth), decodes it, and checks the tree
run → stage → generation; a run resumed by a second factory joins the same trace under the same
root; with no keys there is no tracer and not one connection is attempted."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from langfuse import Langfuse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from factory.settings import Settings
from factory.wiring import group_chats, open_factory
from observability.otlp import escalation_span_id_of, root_span_id_of
from observability.tracing import RunTracer
from routing.base import ChatRequest, ChatResponse, Fallback
from routing.scripted import ScriptedModel
from teams.base import RunStatus
from teams.groupchat import GroupChatOptions
from teams.slugs import ALL_TEAMS
from tests.unit.teams.test_gate import PHASE1, result

pytestmark = pytest.mark.integration
PUBLIC, SECRET = "pk-lf-test-tracing", "sk-lf-test-tracing-secret"
REQUIREMENT = "Build a URL shortener with an HTTP API."
PRICE = 0.000002  # USD a token: the scripted model's calls cost something to trace


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class Collector:
    """Langfuse's OTLP endpoint as far as the SDK can tell: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []  # path, auth, encoding of each request
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                collector.received(self.path, self.headers, body)
                ok = self.path == "/api/public/otel/v1/traces" and self.headers.get("Authorization") == collector.auth
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.auth = "Basic " + base64.b64encode(f"{PUBLIC}:{SECRET}".encode()).decode()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def received(self, path: str, headers: Message, body: bytes) -> None:  # headers: any case
        encoding = headers.get("Content-Encoding", "")
        request = ExportTraceServiceRequest()
        request.ParseFromString(gzip.decompress(body) if encoding == "gzip" else body)
        with self._lock:
            self.requests.append({"path": path, "auth": headers.get("Authorization", ""), "encoding": encoding,
                                  "type": headers.get("Content-Type", "")})  # fmt: skip
            for resource in request.resource_spans:
                for scoped in resource.scope_spans:
                    scope = {a.key: _value(a.value) for a in scoped.scope.attributes}
                    for span in scoped.spans:
                        self.spans.append({
                            "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex() or None, "name": span.name,
                            "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "scope": scoped.scope.name, "public_key": scope.get("public_key"),
                        })  # fmt: skip

    def of(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Priced(ScriptedModel):
    """The scripted model with a price a token; an answer to another team's question came after a
    failed deployment (a fallback)."""

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        response = await super().complete(request, timeout_s=timeout_s)
        hops = [Fallback(deployment="openai/gpt-x@https://api.example", kind="rate_limit", reason="429")]
        return response.model_copy(
            update={
                "cost_usd": (response.tokens_in + response.tokens_out) * PRICE,
                "fallbacks": hops if request.purpose == "clarification" else [],
            }
        )


@pytest.fixture
def collector() -> Iterator[Collector]:
    served = Collector()
    yield served
    served.close()


@pytest.fixture
def settings(
    pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path, collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:  # fmt: skip
    for name, value in (("LANGFUSE_PUBLIC_KEY", PUBLIC), ("LANGFUSE_SECRET_KEY", SECRET),
                        ("LANGFUSE_BASE_URL", collector.url)):  # fmt: skip
        monkeypatch.setenv(name, value)
    return Settings(
        data_dir=tmp_path / "data", database_url=pg_url, redis_url=redis_base_url, redis_prefix=redis_prefix,
        scripted_model=None, confidence_floor=0.6, memory_extraction="structured",
    )  # fmt: skip


def meta(span: dict[str, Any], key: str) -> Any:
    return json.loads(span["attributes"][f"langfuse.observation.metadata.{key}"])


def kind(span: dict[str, Any]) -> Any:
    return span["attributes"].get("langfuse.observation.type")


async def test_a_run_is_one_trace_of_stages_generations_and_a_clarification(
    settings: Settings, collector: Collector, redis: Any
) -> None:
    ask = result(
        "NEEDS_CLARIFICATION", 0.5,
        clarification_needed={"target_team": "solution-architecture", "question": "Which datastore?"},
    )  # fmt: skip
    async with open_factory(settings, model=Priced({"teams": {"business-analysis": [ask]}}), serve=ALL_TEAMS) as f:
        assert [i for i in f.instruments if isinstance(i, RunTracer)]
        out = await f.engine.start(REQUIREMENT, "phase1")
        assert out.run.status is RunStatus.COMPLETE, out
        async with f.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT team, alias, purpose, model, tokens_in, tokens_out, cost_usd FROM usage_ledger"
                " WHERE run_id = %s",
                (out.run.id,),
            )
            ledger = sorted(await cur.fetchall())
    # the factory closed: what the tracer held was sent
    assert collector.requests and all(
        r == {"path": "/api/public/otel/v1/traces", "auth": collector.auth, "encoding": "gzip",
              "type": "application/x-protobuf"}
        for r in collector.requests
    )  # fmt: skip
    trace_id = Langfuse.create_trace_id(seed=out.run.id)
    spans = collector.of(trace_id)
    assert len(spans) == len(collector.spans)  # one trace for the run, nothing else
    assert {(s["scope"], s["public_key"]) for s in spans} == {("langfuse-sdk", PUBLIC)}
    [root] = [s for s in spans if s["parent"] is None]
    assert (root["name"], root["span_id"]) == ("run", f"{root_span_id_of(out.run.id):016x}")
    assert root["attributes"]["langfuse.trace.name"] == "factory run" and meta(root, "outcome") == "completed"
    assert meta(root, "pipeline") == PHASE1
    # The application's root is the run's, marked by the factory (not by the SDK's span-start hook).
    assert [s["name"] for s in spans if s["attributes"].get("langfuse.internal.is_app_root")] == ["run"]
    stages = sorted((s for s in spans if s["name"] in PHASE1), key=lambda s: s["start"])
    assert [s["name"] for s in stages] == PHASE1 and [meta(s, "team") for s in stages] == PHASE1
    assert {s["parent"] for s in stages} == {root["span_id"]}
    assert all(root["start"] <= s["start"] <= s["end"] <= root["end"] for s in stages)
    by_team = {s["name"]: s for s in stages}

    [asked] = [s for s in spans if s["name"] == "clarification" and kind(s) == "span"]
    assert asked["parent"] == by_team["business-analysis"]["span_id"]
    assert asked["attributes"]["langfuse.observation.input"] == "Which datastore?"
    assert meta(asked, "target") == "solution-architecture"

    generations = [s for s in spans if kind(s) == "generation"]
    traced = sorted(
        (meta(g, "team"), meta(g, "alias"), meta(g, "purpose"), g["attributes"]["langfuse.observation.model.name"],
         *json_of(g, "usage_details").values(), json_of(g, "cost_details")["total"])
        for g in generations
    )  # fmt: skip
    assert traced == [tuple(row) for row in ledger]  # a generation per model call, as the ledger has it
    assert all(cost > 0 for *_, cost in traced)
    for generation in generations:
        team = meta(generation, "team")
        if meta(generation, "purpose") == "clarification":  # the target team answering, inside the question
            assert team == "solution-architecture" and generation["parent"] == asked["span_id"]
            assert meta(generation, "fallbacks") == ["openai/gpt-x@https://api.example"]
            assert generation["attributes"]["langfuse.observation.level"] == "WARNING"
        else:
            assert generation["parent"] == by_team[team]["span_id"]
        assert generation["end"] - generation["start"] >= 0


def json_of(span: dict[str, Any], key: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(span["attributes"][f"langfuse.observation.{key}"])
    return value


async def test_a_resumed_run_joins_the_same_trace_under_the_same_root(
    settings: Settings, collector: Collector, redis: Any
) -> None:
    low = result(confidence=0.3)  # COMPLETE below the floor: an approval escalation, the run waits
    async with open_factory(settings, model=Priced({"teams": {"solution-architecture": [low]}})) as first:
        out = await first.engine.start(REQUIREMENT, "phase1")
        assert out.run.status is RunStatus.WAITING_HUMAN
        [escalation] = out.escalations
    trace_id = Langfuse.create_trace_id(seed=out.run.id)
    before = collector.of(trace_id)
    [root] = [s for s in before if s["name"] == "run"]
    assert meta(root, "outcome") == "waiting_human"
    [waiting] = [s for s in before if s["name"] == "solution-architecture"]
    assert waiting["attributes"]["langfuse.observation.status_message"] == "waiting for a human"
    [opened] = [s for s in before if s["name"] == "escalation"]
    assert opened["span_id"] == f"{escalation_span_id_of(escalation.id):016x}"
    assert opened["parent"] == waiting["span_id"]

    async with open_factory(settings, model=Priced({})) as second:  # as another process would
        await second.desk.approve(escalation.id, by="ana")
        assert (await second.engine.drive(out.run.id)).run.status is RunStatus.COMPLETE
    later = [s for s in collector.spans if s not in before]
    assert later and {s["trace_id"] for s in later} == {trace_id}
    assert not [s for s in later if s["parent"] is None]  # the root is the first process's
    assert not [s for s in later if s["attributes"].get("langfuse.internal.is_app_root")]
    rest = ["backend-engineering", "qa-engineering", "documentation"]
    stages = sorted((s for s in later if s["name"] in rest and kind(s) == "span"), key=lambda s: s["start"])
    assert [s["name"] for s in stages] == rest and {s["parent"] for s in stages} == {root["span_id"]}
    [accepted] = [s for s in later if s["name"] == "solution-architecture"]  # approved: committed without a re-run
    [decided] = [s for s in later if s["name"] == "escalation.decided"]
    [completed] = [s for s in later if s["name"] == "run.completed"]
    assert accepted["parent"] == completed["parent"] == root["span_id"]
    assert decided["parent"] == opened["span_id"] and meta(decided, "decided_by") == "ana"
    ids = {s["span_id"]: s for s in later}
    for generation in (s for s in later if kind(s) == "generation"):
        assert ids[generation["parent"]]["name"] == meta(generation, "team")


async def test_without_keys_there_is_no_tracer_and_no_connection_is_attempted(
    settings: Settings, collector: Collector, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY")
    monkeypatch.delenv("LANGFUSE_SECRET_KEY")  # LANGFUSE_BASE_URL still points at the collector
    plain = settings.model_copy(update={"langfuse_public_key": None, "langfuse_secret_key": None})
    attempts: list[Any] = []
    connect = socket.socket.connect

    def recording(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording)
    async with open_factory(plain, model=Priced({})) as f:
        assert not [i for i in f.instruments if isinstance(i, RunTracer)]
        assert (await f.engine.start(REQUIREMENT, "phase1")).run.status is RunStatus.COMPLETE
    assert collector.requests == []
    assert attempts, "the guard saw no connection at all (Redis is one)"
    redis_port = urlsplit(settings.redis_url.get_secret_value() if settings.redis_url else "").port
    tcp = {port for _, port, *_ in (a for a in attempts if isinstance(a, tuple))}
    assert collector.port not in tcp and tcp <= {redis_port}, tcp  # Redis only (PostgreSQL's driver is libpq)


async def test_a_group_chat_is_one_trace_of_its_transcript_lines_and_generations(
    settings: Settings, collector: Collector
) -> None:
    teams = ["solution-architecture", "qa-engineering"]
    async with open_factory(settings, model=Priced({})) as factory:
        chats = group_chats(factory, poll_s=0.05)
        session = await chats.start("Ship the shortener on Friday?", teams, by="ana",
                                    options=GroupChatOptions(max_messages=2))  # fmt: skip
        lines = await chats.transcript(session.id)
    spans = collector.of(Langfuse.create_trace_id(seed=session.id))
    assert spans and len(spans) == len(collector.spans)  # one trace for the session, nothing else
    [root] = [s for s in spans if s["parent"] is None]
    assert (root["name"], root["span_id"]) == ("group chat", f"{root_span_id_of(session.id):016x}")
    assert root["attributes"]["langfuse.trace.name"] == "factory group chat"
    assert (meta(root, "outcome"), meta(root, "teams")) == ("max_messages", teams)
    assert {s["parent"] for s in spans if s is not root} == {root["span_id"]}
    turns = sorted((meta(s, "seq"), s["name"]) for s in spans if kind(s) == "event" and meta(s, "kind") == "team")
    assert turns == [(line.seq, line.source) for line in lines if line.kind == "team"] and len(turns) == 2
    generations = [s for s in spans if kind(s) == "generation"]
    assert sorted(meta(g, "team") for g in generations if meta(g, "purpose") == "groupchat") == sorted(teams)
    assert all(root["start"] <= s["start"] <= s["end"] <= root["end"] for s in spans)
