"""What needs my attention? The waiting escalations summed up and in the order to decide them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from hitl.base import Escalation, Priority, SlaLevel, ordered
from hitl.sla import SlaPolicy


class Waiting(BaseModel):
    """One escalation in the attention list, with where it stands on the SLA ladder."""

    escalation: Escalation
    waited_s: float
    due_in_s: float  # negative once breached
    sla_level: SlaLevel


class BlockedRun(BaseModel):
    run_id: str
    escalations: int
    oldest_waiting_s: float


class Attention(BaseModel):
    """Counts by priority, breaches, the oldest waits, blocked runs, and the ordered list."""

    total: int
    by_priority: dict[Priority, int]
    breached: int
    due_soon: int
    oldest: list[Waiting]
    blocked_runs: list[BlockedRun]
    items: list[Waiting]

    def headline(self) -> str:
        if not self.total:
            return "nothing needs you"
        counts = ", ".join(f"{n} {p.value}" for p, n in self.by_priority.items() if n)
        late = f"; {self.breached} past their SLA" if self.breached else ""
        soon = f"; {self.due_soon} due soon" if self.due_soon else ""
        runs = len(self.blocked_runs)
        return f"{self.total} waiting on you ({counts}){late}{soon}; {runs} run{'s' * (runs != 1)} blocked"


def attention(waiting: list[Escalation], policy: SlaPolicy, now: datetime, *, oldest: int = 3) -> Attention:
    """Sum up ``waiting`` (open and deferred escalations) as of ``now``."""
    items = [
        Waiting(
            escalation=e,
            waited_s=(now - e.created_at).total_seconds(),
            due_in_s=(e.sla_deadline - now).total_seconds(),
            sla_level=policy.level(e, now),
        )
        for e in ordered(waiting)
    ]
    runs: dict[str, BlockedRun] = {}
    for item in items:
        run_id = item.escalation.run_id
        run = runs.setdefault(run_id, BlockedRun(run_id=run_id, escalations=0, oldest_waiting_s=0.0))
        run.escalations += 1
        run.oldest_waiting_s = max(run.oldest_waiting_s, item.waited_s)
    return Attention(
        total=len(items),
        by_priority={p: sum(i.escalation.priority is p for i in items) for p in Priority},
        breached=sum(i.sla_level >= SlaLevel.BREACHED for i in items),
        due_soon=sum(i.sla_level is SlaLevel.DUE_SOON for i in items),
        oldest=sorted(items, key=lambda i: i.waited_s, reverse=True)[:oldest],
        blocked_runs=sorted(runs.values(), key=lambda r: r.oldest_waiting_s, reverse=True),
        items=items,
    )
