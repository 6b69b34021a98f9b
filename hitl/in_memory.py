"""In-memory twin of the escalation queue, for unit tests (the same contract suite runs on both)."""

from __future__ import annotations

from hitl.base import WAITING, Change, Escalation, ordered


class InMemoryEscalationQueue:
    def __init__(self) -> None:
        self._items: dict[str, Escalation] = {}

    async def open(self, escalation: Escalation) -> Escalation:
        fresh = escalation.model_copy(deep=True, update={"sla_started_at": escalation.sla_start()})
        stored = self._items.setdefault(escalation.id, fresh)
        return stored.model_copy(deep=True)

    async def get(self, escalation_id: str) -> Escalation | None:
        found = self._items.get(escalation_id)
        return found.model_copy(deep=True) if found else None

    async def list_open(self, run_id: str | None = None) -> list[Escalation]:
        found = [e for e in self._items.values() if e.status in WAITING and (run_id is None or e.run_id == run_id)]
        return [e.model_copy(deep=True) for e in ordered(found)]

    async def for_run(self, run_id: str) -> list[Escalation]:
        found = [e for e in self._items.values() if e.run_id == run_id]
        return [e.model_copy(deep=True) for e in sorted(found, key=lambda e: (e.created_at, e.id))]

    async def for_stage(self, run_id: str, stage_index: int) -> list[Escalation]:
        found = [e for e in self._items.values() if e.run_id == run_id and e.stage_index == stage_index]
        return [e.model_copy(deep=True) for e in sorted(found, key=lambda e: (e.created_at, e.id))]

    async def apply(self, escalation_id: str, expected_version: int, change: Change) -> Escalation | None:
        return self._update(escalation_id, expected_version, change.model_dump(exclude_none=True))

    async def set_level(self, escalation_id: str, expected_version: int, level: int) -> Escalation | None:
        return self._update(escalation_id, expected_version, {"escalation_level": level})

    def _update(self, escalation_id: str, expected_version: int, fields: dict[str, object]) -> Escalation | None:
        current = self._items.get(escalation_id)
        if current is None or current.version != expected_version or current.status not in WAITING:
            return None
        changed = current.model_copy(update={**fields, "version": current.version + 1})
        self._items[escalation_id] = Escalation.model_validate(changed.model_dump())
        return self._items[escalation_id].model_copy(deep=True)
