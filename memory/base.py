"""Contracts of the ``memory`` package. For now: the immutable, hash-chained audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel


class AuditEntry(BaseModel):
    """One link of a run's audit chain."""

    run_id: str
    seq: int
    key: str
    kind: str
    payload: str  # canonical JSON text; hashed as stored
    prev_sha256: str
    sha256: str
    created_at: datetime


class AuditReport(BaseModel):
    """The outcome of verifying one run's chain."""

    run_id: str
    entries: int
    head_sha256: str
    intact: bool
    problems: list[str]


class AuditLog(Protocol):
    """Append-only audit. Appends are idempotent by ``key`` within a run."""

    async def append(self, run_id: str, key: str, kind: str, payload: dict[str, Any]) -> AuditEntry:
        """Append an entry, or return the existing one with that key."""
        ...

    async def entries(self, run_id: str) -> list[AuditEntry]: ...

    async def verify(self, run_id: str) -> AuditReport: ...
