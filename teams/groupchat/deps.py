"""What a group chat needs from the factory, built once in ``factory/wiring.py`` and passed in."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from memory.base import AuditLog
from memory.gateway import MemoryGateway
from observability.base import EventSink
from routing.base import RoutedChatModel
from teams.groupchat.store_pg import GroupChatStore
from teams.lease import Lease
from teams.pipeline import PipelineEngine


class Leases(Protocol):
    """Who drives what: ``PostgresRunStore.lease`` (one row per session in ``run_leases``)."""

    def lease(self, run_id: str) -> AbstractAsyncContextManager[Lease]: ...


@dataclass(frozen=True)
class GroupChatDeps:
    """The services a session uses; every one is the factory's own (no second model client)."""

    model: RoutedChatModel  # ``Factory.model``: routing, fallback, budgets, the usage ledger, tracing
    store: GroupChatStore
    leases: Leases
    gateway: MemoryGateway | None  # recall and retention; None: teams speak without memory
    audit: AuditLog
    events: EventSink  # the live event stream (and the process's local bus)
    engine: PipelineEngine | None = None  # seeds a pipeline run from a summary
    timeout_s: float = 300.0  # one model call
    poll_s: float = 0.5  # how often a driven session looks for the operator's stop during a turn
    window_tokens: int = 8192  # the speakers' context window (AutoGen's remaining_tokens)
    transcript_chars: int = 12_000  # of the transcript the summary model reads (its end, and the topic)
