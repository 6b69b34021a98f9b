"""OpenTelemetry plumbing of the traces (``observability.tracing``): the ids derived from runs,
Langfuse's attributes as its SDK encodes them, and the exporter.

The exporter is the Langfuse SDK's own (``LangfuseSpanProcessor``: OTLP/HTTP protobuf to
``{base_url}/api/public/otel/v1/traces``, gzipped, Basic auth with the keys, sent in batches by a
background thread) on a ``TracerProvider`` the factory owns. Not the ``Langfuse(...)`` client: it is
a process-wide singleton per public key (a second factory in one process would get the first one's
provider and base URL, and its ``shutdown`` leaves that exporter running), and given no provider it
makes itself OpenTelemetry's global one, which then collects every library's spans. Nothing here is
global: the provider lives and ends with the factory that opened it.

The SDK is imported only when tracing is configured (it takes about a second).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, Tracer

from observability.redact import redact, register_secret
from observability.text import storable

log = logging.getLogger(__name__)

#: Where the Langfuse SDK sends traces when no base URL is configured (its own default).
DEFAULT_BASE_URL = "https://cloud.langfuse.com"
MAX_TEXT = 4000  # characters of one question, answer or error kept on a span
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Langfuse's attribute names (langfuse.LangfuseOtelSpanAttributes; a test holds them to the SDK's).
TYPE = "langfuse.observation.type"
LEVEL = "langfuse.observation.level"
STATUS = "langfuse.observation.status_message"
INPUT = "langfuse.observation.input"
OUTPUT = "langfuse.observation.output"
METADATA = "langfuse.observation.metadata"
MODEL = "langfuse.observation.model.name"
USAGE = "langfuse.observation.usage_details"
COST = "langfuse.observation.cost_details"
TRACE_NAME = "langfuse.trace.name"
TRACE_METADATA = "langfuse.trace.metadata"
APP_ROOT = "langfuse.internal.is_app_root"  # the root of what this application traced (its trace's root)


def trace_id_of(run_id: str) -> int:
    """The run's trace id: the first 16 bytes of SHA-256 of the run id, as Langfuse's
    ``create_trace_id(seed=run_id)`` makes it (so the SDK finds the trace from the run id too)."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big")


def _span_id(seed: str) -> int:
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") or 1  # 0 is the invalid id


def root_span_id_of(run_id: str) -> int:
    """The span id of the run's root span, the parent of every stage span of every process."""
    return _span_id(f"run:{run_id}")


def escalation_span_id_of(escalation_id: str) -> int:
    """The span id of an escalation's event, the parent of its decisions wherever they are made."""
    return _span_id(f"escalation:{escalation_id}")


class PinnedIds(RandomIdGenerator):
    """Random span and trace ids, except inside ``pinned``: the ids derived from a run or an
    escalation, which other processes compute to nest under them."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def pinned(self, trace_id: int, span_id: int) -> Iterator[None]:
        self._local.ids = (trace_id, span_id)
        try:
            yield
        finally:
            self._local.ids = None

    def generate_trace_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[0] if ids else super().generate_trace_id()

    def generate_span_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[1] if ids else super().generate_span_id()

    def is_trace_id_random(self) -> bool:
        return getattr(self._local, "ids", None) is None and super().is_trace_id_random()


def under(trace_id: int, span_id: int) -> Context:
    """A context whose parent is the span ``(trace_id, span_id)``, wherever it was made."""
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def ns(at: datetime) -> int:
    """``at`` in nanoseconds since the epoch, exactly (a naive time is taken as UTC)."""
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(microseconds=1) * 1000


def text(value: Any) -> str:
    """Text for a span: secrets masked, what protobuf cannot encode (a lone surrogate) replaced, cut."""
    return redact(storable(str(value)))[:MAX_TEXT]


def _json(value: Any) -> str:
    """A value as the Langfuse SDK encodes metadata (JSON, a plain string as a JSON string)."""
    if isinstance(value, str):
        return json.dumps(text(value), ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def metadata(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """``values`` as Langfuse metadata attributes under ``prefix`` (one attribute a key; None left out)."""
    return {f"{prefix}.{key}": _json(value) for key, value in values.items() if value is not None}


def observation(
    kind: str, values: dict[str, Any], *, level: str | None = None, status: str | None = None
) -> dict[str, Any]:
    """Langfuse's attributes of an observation (``span``, ``event``, ``generation``) with ``values`` as
    its metadata, ``level`` (DEFAULT, WARNING, ERROR) and ``status`` message."""
    attributes: dict[str, Any] = {TYPE: kind, **metadata(METADATA, values)}
    if level is not None:
        attributes[LEVEL] = level
    if status is not None:
        attributes[STATUS] = text(status)
    return attributes


@dataclass(frozen=True)
class Export:
    """A tracer whose spans go to Langfuse, the ids it draws from, and how to send what is queued and stop."""

    tracer: Tracer
    ids: PinnedIds
    shutdown: Callable[[], None]


def langfuse_export(*, public_key: str, secret_key: str, base_url: str | None, timeout_s: int = 5) -> Export:
    """The Langfuse SDK's exporter on a provider of our own (see the module's docstring). ``timeout_s``
    bounds each request; spans wait at most 5 s in the queue (the SDK's batching)."""
    # The SDK's own modules, not its documented API (langfuse>=5.2,<6): the tests send through them.
    from langfuse import __version__ as sdk_version
    from langfuse._client.constants import LANGFUSE_TRACER_NAME
    from langfuse._client.span_processor import LangfuseSpanProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    register_secret(secret_key)
    ids = PinnedIds()
    provider = TracerProvider(
        id_generator=ids, resource=Resource.create({"service.name": "ai-software-factory"}), shutdown_on_exit=False
    )
    provider.add_span_processor(
        _processor(LangfuseSpanProcessor)(
            public_key=public_key,
            secret_key=secret_key,
            base_url=(base_url or DEFAULT_BASE_URL).rstrip("/"),
            timeout=timeout_s,
        )
    )
    # The processor sends only the spans of the SDK's tracer for its public key (its project filter).
    tracer = provider.get_tracer(LANGFUSE_TRACER_NAME, sdk_version, attributes={"public_key": public_key})

    def shutdown() -> None:
        provider.force_flush(timeout_s * 1000)
        provider.shutdown()

    return Export(tracer=tracer, ids=ids, shutdown=shutdown)


def _processor(sdk: type[Any]) -> type[Any]:
    """The SDK's span processor (its filter, batching and exporter) without its span-start hook.

    That hook serves the SDK's own context API (``propagate_attributes``, baggage, and marking the
    application's root among spans of instrumented libraries), none of which the factory uses: its
    spans carry their attributes from the start and it marks its roots itself (``APP_ROOT``). On the
    run's path the hook was half of what a span cost (about 60 µs a stage, ``bench.scale``)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class Processor(sdk):  # type: ignore[misc]
        def on_start(self, span: Any, parent_context: Context | None = None) -> None:
            BatchSpanProcessor.on_start(self, span, parent_context)

    return Processor


async def in_thread(work: Callable[[], None], timeout_s: float) -> None:
    """Run ``work`` (blocking network I/O) in a daemon thread and wait at most ``timeout_s`` for it:
    an unreachable server never holds the process past that (nor its exit: the thread is a daemon)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished(error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)

    def target() -> None:
        error: BaseException | None = None
        try:
            work()
        except BaseException as exc:  # handed to the waiting task, which logs it
            error = exc
        try:
            loop.call_soon_threadsafe(finished, error)
        except RuntimeError:  # the loop closed meanwhile: nobody waits any more
            pass

    threading.Thread(target=target, name="tracing-close", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout_s)
    except TimeoutError:
        log.warning("tracing: the exporter did not finish sending within %.0f s; what was left is dropped", timeout_s)
    except Exception as exc:
        log.warning("tracing: the exporter failed on close: %s", exc)
