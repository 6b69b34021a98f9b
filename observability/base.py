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
