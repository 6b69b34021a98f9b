"""Observability: live events and logging."""

from observability.base import Event, EventSink

__all__ = ["Event", "EventSink"]
