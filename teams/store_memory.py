"""In-memory twin of the run store and usage ledger, for unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from factory.errors import LeaseLost
from routing.base import Spend, UsageRecord
from teams.base import TAKEN_OVER, Run, RunStatus, StageRecord, StoredArtifact
from teams.lease import Lease, busy, lost_message, new_owner


class InMemoryRunStore:
    """``RunStore`` and ``UsageLedger`` in dictionaries; copies in and out like a database."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._stages: dict[tuple[str, int], StageRecord] = {}
        self._artifacts: dict[tuple[str, str], StoredArtifact] = {}
        self.usage_rows: list[UsageRecord] = []
        self._leases: dict[str, tuple[str, int, bool]] = {}  # run id -> (owner, token, held)

    def _held(self, lease: Lease) -> None:
        """Owner and token fence a write, as in PostgreSQL (a lapsed lease nobody took still holds)."""
        lease.check()
        if self._leases.get(lease.run_id, ("", 0, False))[:2] != (lease.owner, lease.token):
            lease.lost = TAKEN_OVER
            raise LeaseLost(lost_message(lease.run_id, lease.lost))

    def take_over(self, run_id: str) -> None:
        """Let the run's lease lapse, as if its holder stalled past its lifetime (for tests)."""
        owner, token, _held = self._leases[run_id]
        self._leases[run_id] = (owner, token, False)

    async def create_run(self, run: Run, stages: Sequence[StageRecord] = (), *, lease: Lease) -> None:
        self._held(lease)
        if run.id in self._runs:
            return
        self._runs[run.id] = run.model_copy(deep=True)
        for stage in stages:
            await self.save_stage(stage, lease=lease)

    async def get_run(self, run_id: str) -> Run | None:
        run = self._runs.get(run_id)
        return run.model_copy(deep=True) if run else None

    async def set_run_status(
        self, run_id: str, status: RunStatus, *, lease: Lease, stages: Sequence[StageRecord] = ()
    ) -> None:
        self._held(lease)
        for stage in stages:
            await self.save_stage(stage, lease=lease)
        run = self._runs[run_id]
        run.status, run.updated_at = status, datetime.now(UTC)

    async def save_stage(self, stage: StageRecord, artifacts: Sequence[StoredArtifact] = (), *, lease: Lease) -> None:
        await self.save_artifacts(artifacts, lease=lease)
        self._stages[(stage.run_id, stage.index)] = stage.model_copy(deep=True)

    async def stages(self, run_id: str) -> list[StageRecord]:
        found = [s for (r, _i), s in self._stages.items() if r == run_id]
        return [s.model_copy(deep=True) for s in sorted(found, key=lambda s: s.index)]

    async def runs_with_status(
        self, statuses: Sequence[RunStatus], *, limit: int = 100, exclude: Sequence[str] = ()
    ) -> list[Run]:
        found = sorted(
            (r for r in self._runs.values() if r.status in statuses and r.id not in exclude), key=lambda r: r.updated_at
        )
        return [r.model_copy(deep=True) for r in found[:limit]]

    async def recent_runs(self, *, limit: int = 10) -> list[Run]:
        found = sorted(self._runs.values(), key=lambda r: r.created_at, reverse=True)
        return [r.model_copy(deep=True) for r in found[:limit]]

    @asynccontextmanager
    async def lease(self, run_id: str) -> AsyncIterator[Lease]:
        if self._leases.get(run_id, ("", 0, False))[2]:
            raise busy(run_id)
        async with self.holding(await self.seize(run_id)) as lease:
            yield lease

    async def seize(self, run_id: str) -> Lease:
        _owner, token, _held = self._leases.get(run_id, ("", 0, False))
        lease = Lease(run_id=run_id, owner=new_owner(), token=token + 1)
        self._leases[run_id] = (lease.owner, lease.token, True)
        return lease

    @asynccontextmanager
    async def holding(self, lease: Lease) -> AsyncIterator[Lease]:
        try:
            yield lease
        finally:
            if self._leases.get(lease.run_id) == (lease.owner, lease.token, True):
                self._leases[lease.run_id] = (lease.owner, lease.token, False)

    async def renew(self, lease: Lease) -> None:
        self._held(lease)

    async def hold(self, lease: Lease, *, for_s: float) -> None:
        self._held(lease)

    async def save_artifacts(self, artifacts: Sequence[StoredArtifact], *, lease: Lease) -> None:
        self._held(lease)
        for a in artifacts:
            self._artifacts[(a.run_id, a.name)] = a

    async def artifacts(self, run_id: str) -> list[StoredArtifact]:
        found = [a for (r, _n), a in self._artifacts.items() if r == run_id]
        return sorted(found, key=lambda a: (a.stage_index, a.name))

    async def record(self, usage: UsageRecord) -> None:
        self.usage_rows.append(usage)

    async def spent(self, run_id: str, team: str | None = None) -> Spend:
        rows = [u for u in self.usage_rows if u.run_id == run_id and (team is None or u.team == team)]
        return Spend(tokens=sum(u.tokens_in + u.tokens_out for u in rows), cost_usd=sum(u.cost_usd for u in rows))

    async def usage(self, run_id: str) -> list[UsageRecord]:
        return [u for u in self.usage_rows if u.run_id == run_id]
