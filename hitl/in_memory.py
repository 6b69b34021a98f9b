"""In-memory twin of the escalation queue, for unit tests."""

from __future__ import annotations

from hitl.base import PRIORITY_RANK, Escalation, EscalationStatus


class InMemoryEscalationQueue:
    def __init__(self) -> None:
        self._items: dict[str, Escalation] = {}

    async def open(self, escalation: Escalation) -> Escalation:
        stored = self._items.setdefault(escalation.id, escalation.model_copy(deep=True))
        return stored.model_copy(deep=True)

    async def get(self, escalation_id: str) -> Escalation | None:
        found = self._items.get(escalation_id)
        return found.model_copy(deep=True) if found else None

    async def list_open(self, run_id: str | None = None) -> list[Escalation]:
        waiting = {EscalationStatus.OPEN, EscalationStatus.DEFERRED}
        found = [e for e in self._items.values() if e.status in waiting and (run_id is None or e.run_id == run_id)]
        found.sort(key=lambda e: (PRIORITY_RANK[e.priority], e.sla_deadline, e.created_at))
        return [e.model_copy(deep=True) for e in found]
