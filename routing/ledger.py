"""Recording every model call in the usage ledger, whichever model answered, whole or streamed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from observability.redact import redact
from observability.text import storable
from routing.base import ChatModel, ChatRequest, ChatResponse, Fallback, Spend, UsageLedger, UsageRecord
from routing.streaming import check_streamable, closing, streaming

log = logging.getLogger(__name__)


def _row(
    request: ChatRequest,
    response: ChatResponse | None,
    latency_ms: float,
    error: str | None,
    fallbacks: list[Fallback] | None = None,
) -> UsageRecord:
    return UsageRecord(
        run_id=request.run_id,
        team=request.team,
        alias=request.alias,
        model=response.model if response else "",
        purpose=request.purpose,
        tokens_in=response.tokens_in if response else 0,
        tokens_out=response.tokens_out if response else 0,
        cost_usd=response.cost_usd if response else 0.0,
        latency_ms=latency_ms,
        ok=error is None,
        error=redact(storable(error))[:500] if error is not None else None,  # a provider's text: masked whole, then cut
        created_at=datetime.now(UTC),
        fallbacks=response.fallbacks if response else (fallbacks or []),
    )


#: Told of every call that fell back (the response is None when no deployment answered), as it happens.
OnFallback = Callable[[ChatRequest, ChatResponse | None, list[Fallback]], Awaitable[None]]


class RecordingModel:
    """Wraps a ``ChatModel``; each call, failed or not, becomes one ledger row, and a call that fell
    back is told to ``on_fallback`` (the live event) at once."""

    def __init__(self, inner: ChatModel, ledger: UsageLedger, *, on_fallback: OnFallback | None = None) -> None:
        self._inner = inner
        self._ledger = ledger
        self._on_fallback = on_fallback

    async def _tell(self, request: ChatRequest, response: ChatResponse | None, hops: list[Fallback]) -> None:
        if not hops or self._on_fallback is None:
            return
        try:
            await self._on_fallback(request, response, hops)
        except Exception as exc:  # an event that cannot be sent never fails the call
            log.warning("fallback of %s not reported: %s", request.alias, exc)

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        started = time.perf_counter()
        try:
            response = await self._inner.complete(request, timeout_s=timeout_s)
        except Exception as exc:
            hops = [f for f in getattr(exc, "fallbacks", []) if isinstance(f, Fallback)]
            await self._ledger.record(_row(request, None, (time.perf_counter() - started) * 1000, str(exc), hops))
            await self._tell(request, None, hops)
            raise
        latency_ms = response.latency_ms or (time.perf_counter() - started) * 1000
        await self._ledger.record(_row(request, response, latency_ms, None))
        await self._tell(request, response, response.fallbacks)
        return response

    async def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        """``StreamingChatModel``: the inner model's chunks as they come; one ledger row per call, written
        before the final ``ChatResponse`` is handed on (a reader may stop at it). A stream that broke
        off mid-way is a failed row with what its part cost; one the reader left, a failed row too."""
        check_streamable(request)
        started = time.perf_counter()
        shown = 0
        recorded = False
        try:
            async with closing(streaming(self._inner).stream(request, timeout_s=timeout_s)) as items:
                async for item in items:
                    if isinstance(item, ChatResponse):
                        recorded = True
                        latency_ms = item.latency_ms or (time.perf_counter() - started) * 1000
                        await self._ledger.record(_row(request, item, latency_ms, None))
                        await self._tell(request, item, item.fallbacks)
                    else:
                        shown += len(item)
                    yield item
        except Exception as exc:
            if not recorded:
                recorded = True
                partial = getattr(exc, "response", None)  # routing.streaming.StreamInterrupted: the part that came
                partial = partial if isinstance(partial, ChatResponse) else None
                hops = [f for f in getattr(exc, "fallbacks", []) if isinstance(f, Fallback)]
                row = _row(request, partial, (time.perf_counter() - started) * 1000, str(exc), hops)
                await self._ledger.record(row.model_copy(update={"fallbacks": hops}))
                await self._tell(request, None, hops)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            if not recorded:  # the reader stopped reading (the operator's "stop"), or was cancelled
                error = f"the caller stopped the stream after {shown} characters"
                await self._ledger.record(_row(request, None, (time.perf_counter() - started) * 1000, error))
            raise


class ObservedLedger:
    """A ``UsageLedger`` that also hands every recorded call to ``observe`` (metrics, traces) once it
    is stored. An observer that fails is logged; the call and its row stand."""

    def __init__(self, inner: UsageLedger, observe: Callable[[UsageRecord], None]) -> None:
        self._inner = inner
        self._observe = observe

    async def record(self, usage: UsageRecord) -> None:
        await self._inner.record(usage)
        try:
            self._observe(usage)
        except Exception as exc:
            log.warning("model call of %s not observed: %s", usage.alias, exc)

    async def spent(self, run_id: str, team: str | None = None) -> Spend:
        return await self._inner.spent(run_id, team)
