"""Contracts of the ``observability`` package: live events and where they go."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field


class Event(BaseModel):
    """Something that happened in a run, for live progress and dashboards."""

    type: str  # e.g. run.started, stage.started, stage.completed, escalation.opened
    run_id: str
    data: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class EventSink(Protocol):
    """Where events are sent. Emitting never fails the run; sinks log their own trouble."""

    async def emit(self, event: Event) -> None: ...


class ModelCall(BaseModel):
    """One model call as instruments see it (the usage ledger's row, in observability's own terms)."""

    run_id: str | None
    team: str | None
    alias: str
    model: str  # the deployment that answered ('' when none did)
    purpose: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    ok: bool
    error: str | None = None
    fallbacks: list[str] = Field(default_factory=list)  # the deployments that failed before, in order
    ended_at: datetime


class Instrument(Protocol):
    """What watches a process for operators (metrics, traces): every live event, and every model call.

    Both are called inline on the run's path: they must be quick, never block on the network, and never
    raise (an instrument's trouble is logged by the instrument, not the run's)."""

    async def emit(self, event: Event) -> None: ...

    def model_call(self, call: ModelCall) -> None: ...
