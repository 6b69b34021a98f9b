"""In-memory twin of the escalation queue, for unit tests (the same contract suite runs on both)."""

from __future__ import annotations

from datetime import UTC, datetime

from factory.errors import FactoryError
from hitl.base import (
    WAITING,
    AuditOf,
    Change,
    DecisionRecorder,
    Escalation,
    EscalationStatus,
    ordered,
    unrecorded,
)


class InMemoryEscalationQueue:
    """With a ``recorder`` (as the Postgres queue with its audit writer), a change's audit entry
    is written before the change is stored: if it cannot be, the change is not made."""

    def __init__(self, recorder: DecisionRecorder | None = None) -> None:
        self._items: dict[str, Escalation] = {}
        self._recorder = recorder

    async def open(self, escalation: Escalation) -> Escalation:
        fresh = escalation.model_copy(deep=True, update={"sla_started_at": escalation.sla_start()})
        stored = self._items.setdefault(escalation.id, fresh)
        return stored.model_copy(deep=True)

    async def get(self, escalation_id: str) -> Escalation | None:
        found = self._items.get(escalation_id)
        return found.model_copy(deep=True) if found else None

    async def list_open(self, run_id: str | None = None, *, brief: bool = False) -> list[Escalation]:
        found = [e for e in self._items.values() if e.status in WAITING and (run_id is None or e.run_id == run_id)]
        if brief:
            return [e.model_copy(update={"context": {}}, deep=True) for e in ordered(found)]
        return [e.model_copy(deep=True) for e in ordered(found)]

    async def for_run(self, run_id: str) -> list[Escalation]:
        found = [e for e in self._items.values() if e.run_id == run_id]
        return [e.model_copy(deep=True) for e in sorted(found, key=lambda e: (e.created_at, e.id))]

    async def for_stage(self, run_id: str, stage_index: int) -> list[Escalation]:
        found = [e for e in self._items.values() if e.run_id == run_id and e.stage_index == stage_index]
        return [e.model_copy(deep=True) for e in sorted(found, key=lambda e: (e.created_at, e.id))]

    async def apply(
        self, escalation_id: str, expected_version: int, change: Change, *, audit: AuditOf | None = None
    ) -> Escalation | None:
        return await self._update(escalation_id, expected_version, change.model_dump(exclude_none=True), audit)

    async def set_level(
        self, escalation_id: str, expected_version: int, level: int, *, audit: AuditOf | None = None
    ) -> Escalation | None:
        return await self._update(escalation_id, expected_version, {"escalation_level": level}, audit)

    async def close_for_run(
        self, run_id: str, *, by: str, reason: str | None, audit: AuditOf | None = None
    ) -> list[Escalation]:
        fields: dict[str, object] = {
            "status": EscalationStatus.EXPIRED, "answer": reason, "decided_by": by, "decided_at": datetime.now(UTC),
        }  # fmt: skip
        closed = []
        for waiting in await self.for_run(run_id):
            if waiting.status in WAITING:
                changed = await self._update(waiting.id, waiting.version, fields, audit)
                if changed is not None:  # else an operator decided it meanwhile: theirs stands
                    closed.append(changed)
        return closed

    async def _update(
        self, escalation_id: str, expected_version: int, fields: dict[str, object], audit: AuditOf | None
    ) -> Escalation | None:
        current = self._items.get(escalation_id)
        if current is None or current.version != expected_version or current.status not in WAITING:
            return None
        changed = current.model_copy(update={**fields, "version": current.version + 1})
        changed = Escalation.model_validate(changed.model_dump())
        if audit is not None and self._recorder is not None:
            try:
                await self._recorder.append(changed.run_id, *audit(changed))
            except FactoryError as exc:
                raise unrecorded(changed, str(exc)) from exc
        self._items[escalation_id] = changed
        return changed.model_copy(deep=True)
