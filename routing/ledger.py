"""Recording every model call in the usage ledger, whichever model answered."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from routing.base import ChatModel, ChatRequest, ChatResponse, UsageLedger, UsageRecord


class RecordingModel:
    """Wraps a ``ChatModel``; each call, failed or not, becomes one ledger row."""

    def __init__(self, inner: ChatModel, ledger: UsageLedger) -> None:
        self._inner = inner
        self._ledger = ledger

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        started = time.perf_counter()
        try:
            response = await self._inner.complete(request, timeout_s=timeout_s)
        except Exception as exc:
            await self._ledger.record(
                UsageRecord(
                    run_id=request.run_id,
                    team=request.team,
                    alias=request.alias,
                    model="",
                    purpose=request.purpose,
                    tokens_in=0,
                    tokens_out=0,
                    cost_usd=0.0,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    ok=False,
                    error=str(exc)[:500],
                    created_at=datetime.now(UTC),
                )
            )
            raise
        await self._ledger.record(
            UsageRecord(
                run_id=request.run_id,
                team=request.team,
                alias=request.alias,
                model=response.model,
                purpose=request.purpose,
                tokens_in=response.tokens_in,
                tokens_out=response.tokens_out,
                cost_usd=response.cost_usd,
                latency_ms=response.latency_ms or (time.perf_counter() - started) * 1000,
                ok=True,
                created_at=datetime.now(UTC),
            )
        )
        return response
